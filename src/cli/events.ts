// pxd events [--follow] [--json]: what happened in the cluster as the node
// asked saw it (GET /v1/events); --follow asks again every second for what
// came after the last one printed.

import type { Command } from "commander";
import type { ClusterEvent } from "../api/types.js";
import { clientFor } from "./args.js";

/** How often --follow asks for new events. */
const followEveryMs = 1000;

function line(e: ClusterEvent): string {
  return `${e.at}  ${e.kind.padEnd(15)} ${e.message}`;
}

export function registerEvents(program: Command): void {
  program
    .command("events")
    .description("what happened in the cluster (nodes down and up, volumes created and deleted, replicas moved, leaders changed) as the node asked saw it")
    .option("--follow", "keep printing new events as they happen (Ctrl-C stops)")
    .option("--json", "one JSON object a line")
    .action(async (options: { follow?: boolean; json?: boolean }, command: Command) => {
      const api = clientFor(command);
      const print = (e: ClusterEvent): void => console.log(options.json ? JSON.stringify(e) : line(e));
      let since = 0;
      for (;;) {
        const { events } = await api.events(since);
        for (const e of events) print(e);
        since = events.at(-1)?.seq ?? since;
        if (options.follow !== true) return;
        await new Promise((r) => setTimeout(r, followEveryMs));
      }
    });
}
