// `npm run sim -- ...`: the simulators' one command line.
//   npm run sim -- --seed N [...]              the Raft core simulator (test/sim/main.ts)
//   npm run sim -- --store --seed N [...]      one node's store over a simulated disk (store-main.ts)
//   npm run sim -- --cluster --seed N [...]    whole replica nodes (cluster-main.ts)
//   npm run sim -- --catalog --seed N [...]    the catalog and control loops on whole nodes (catalog-main.ts)
// Each takes --seeds COUNT and --verbose; see its file for the rest.

const mains: Record<string, string> = { "--cluster": "./cluster-main.js", "--catalog": "./catalog-main.js", "--store": "./store-main.js" };
const which = Object.keys(mains).find((flag) => process.argv.includes(flag));
process.argv = process.argv.filter((a) => mains[a] === undefined);
await import(which === undefined ? "./main.js" : mains[which]!);
