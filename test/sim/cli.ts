// `npm run sim -- ...`: the simulators' one command line.
//   npm run sim -- --seed N [...]              the Raft core simulator (test/sim/main.ts)
//   npm run sim -- --store --seed N [...]      one node's store over a simulated disk (store-main.ts)
//   npm run sim -- --cluster --seed N [...]    whole replica nodes (cluster-main.ts)
// Each takes --seeds COUNT and --verbose; see its file for the rest.

const which = process.argv.includes("--cluster") ? "cluster" : process.argv.includes("--store") ? "store" : "core";
process.argv = process.argv.filter((a) => a !== "--cluster" && a !== "--store");
await import(which === "cluster" ? "./cluster-main.js" : which === "store" ? "./store-main.js" : "./main.js");
