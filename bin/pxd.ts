// The pxd entry point: hands argv to src/cli and exits with its code.
// bin/pxd (a JS shim) imports the compiled form of this file, dist/bin/pxd.js.

import { runCli } from "../src/cli/main.js";

const code = await runCli(process.argv);
// A command may already have set a failure code (the daemon does when it cannot start).
if (!process.exitCode) process.exitCode = code;
