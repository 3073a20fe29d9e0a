// fio over its nbd engine: build the command line, run it, keep the numbers.

import { captureOk } from "./proc.js";

export interface FioSpec {
  name: string;
  rw: "read" | "write" | "randread" | "randwrite";
  bs: string;
  iodepth: number;
  size: string;
  /** Seconds, time based; omitted: run until size (times loops) is done. */
  runtimeSec?: number;
  loops?: number;
}

export interface FioResult {
  iops: number;
  bytesPerSec: number;
  ioBytes: number;
  clatMeanUs: number;
  clatP99Us: number;
  runtimeMs: number;
  /** fio's own CPU use, percent of one core. */
  fioCpuPct: number;
}

interface FioDir {
  io_bytes: number;
  bw_bytes: number;
  iops: number;
  runtime: number;
  clat_ns: { mean: number; percentile?: Record<string, number> };
}

interface FioJson {
  jobs: { error: number; read: FioDir; write: FioDir; usr_cpu: number; sys_cpu: number }[];
}

export function fioArgs(spec: FioSpec, uri: string): string[] {
  const args = [
    `--name=${spec.name}`, "--ioengine=nbd", `--uri=${uri}`, `--rw=${spec.rw}`, `--bs=${spec.bs}`,
    `--iodepth=${spec.iodepth}`, `--size=${spec.size}`, "--output-format=json",
  ];
  if (spec.runtimeSec !== undefined) args.push("--time_based", `--runtime=${spec.runtimeSec}`);
  if (spec.loops !== undefined) args.push(`--loops=${spec.loops}`);
  return args;
}

export function runFio(spec: FioSpec, uri: string, timeoutMs: number): Promise<FioResult> {
  return runFioArgs(spec, uri, fioArgs(spec, uri), timeoutMs);
}

/**
 * The disk's own durable write rate, no NBD and no pxd: fio overwrites a
 * pre-written file on `dir`'s filesystem with 1 MiB writes (psync, one job)
 * and an fdatasync after every `syncEvery` writes.
 */
export async function runFioDurableFile(dir: string, syncEvery: number, runtimeSec: number): Promise<FioResult> {
  const file = `${dir}/ceiling.img`;
  await captureOk("fio", ["--name=ceiling-fill", `--filename=${file}`, "--rw=write", "--bs=1M", "--size=1G", "--ioengine=psync", "--end_fsync=1", "--output-format=json"], 10 * 60 * 1000);
  const spec: FioSpec = { name: "ceiling", rw: "write", bs: "1M", iodepth: 1, size: "1G", runtimeSec };
  const args = [`--name=${spec.name}`, `--filename=${file}`, "--rw=write", "--bs=1M", "--size=1G", "--ioengine=psync", `--fdatasync=${syncEvery}`, "--time_based", `--runtime=${runtimeSec}`, "--output-format=json"];
  return runFioArgs(spec, file, args, (runtimeSec + 120) * 1000);
}

async function runFioArgs(spec: FioSpec, where: string, args: string[], timeoutMs: number): Promise<FioResult> {
  const out = await captureOk("fio", args, timeoutMs);
  const start = out.indexOf("{");
  if (start < 0) throw new Error(`fio ${spec.name} printed no JSON:\n${out}`);
  const job = (JSON.parse(out.slice(start)) as FioJson).jobs[0];
  if (job === undefined) throw new Error(`fio ${spec.name} reported no job`);
  if (job.error !== 0) throw new Error(`fio ${spec.name} against ${where} failed with error ${job.error}`);
  const dir = spec.rw.endsWith("read") ? job.read : job.write;
  if (dir.io_bytes === 0) throw new Error(`fio ${spec.name} against ${where} moved no data`);
  return {
    iops: dir.iops,
    bytesPerSec: dir.bw_bytes,
    ioBytes: dir.io_bytes,
    clatMeanUs: dir.clat_ns.mean / 1000,
    clatP99Us: (dir.clat_ns.percentile?.["99.000000"] ?? NaN) / 1000,
    runtimeMs: dir.runtime,
    fioCpuPct: job.usr_cpu + job.sys_cpu,
  };
}

export async function fioVersion(): Promise<string> {
  return (await captureOk("fio", ["--version"], 10000)).trim();
}
