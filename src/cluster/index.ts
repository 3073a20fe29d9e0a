// The cluster layer's public surface: the catalog state machine the meta
// group applies, its commands and snapshots, and placement.

export * from "./commands.js";
export * from "./catalog.js";
export * from "./placement.js";
export * from "./snapshot.js";
export * from "./rules.js";
export * from "./control.js";
export * from "./state-machine.js";
