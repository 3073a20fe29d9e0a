// Majority arithmetic, knowing nothing of terms or messages (etcd's quorum/).

import type { NodeId } from "./types.js";

export const VoteResult = { pending: 0, lost: 1, won: 2 } as const;
export type VoteResult = (typeof VoteResult)[keyof typeof VoteResult];

export function quorumSize(voters: number): number {
  return Math.floor(voters / 2) + 1;
}

/**
 * The largest index that a majority of `voters` have acknowledged, given each
 * voter's acknowledged index by `acked`. `scratch` avoids an allocation per call.
 */
export function majorityIndex(voters: readonly NodeId[], acked: (id: NodeId) => number, scratch: number[]): number {
  const n = voters.length;
  if (n === 0) return 0;
  scratch.length = n;
  for (let i = 0; i < n; i++) scratch[i] = acked(voters[i] as NodeId);
  // Insertion sort, descending: n is small (3 or 5) and this allocates nothing.
  for (let i = 1; i < n; i++) {
    const v = scratch[i] as number;
    let j = i - 1;
    while (j >= 0 && (scratch[j] as number) < v) {
      scratch[j + 1] = scratch[j] as number;
      j--;
    }
    scratch[j + 1] = v;
  }
  return scratch[quorumSize(n) - 1] as number;
}

/** The outcome of an election among `voters` given the answers so far. */
export function voteResult(voters: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  const q = quorumSize(voters.length);
  let granted = 0;
  let missing = 0;
  for (const id of voters) {
    const v = votes.get(id);
    if (v === undefined) missing++;
    else if (v) granted++;
  }
  if (granted >= q) return VoteResult.won;
  if (granted + missing >= q) return VoteResult.pending;
  return VoteResult.lost;
}

/** Whether the nodes for which `has` is true form a majority of `voters`. */
export function isQuorum(voters: readonly NodeId[], has: (id: NodeId) => boolean): boolean {
  let n = 0;
  for (const id of voters) if (has(id)) n++;
  return n >= quorumSize(voters.length);
}
