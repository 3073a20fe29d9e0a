// The pxd entry point: hands argv to src/cli and exits with its code.
// bin/pxd (a JS shim) imports the compiled form of this file, dist/bin/pxd.js.

import { runCli } from "../src/cli/main.js";

process.exitCode = await runCli(process.argv);
