// Prometheus text exposition parsed by an independent parser
// (parse-prometheus-text-format, a port of the Prometheus Python client's),
// and the metric names a Grafana dashboard's queries use.

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export interface ParsedSample {
  value?: string;
  labels?: Record<string, string>;
  /** Histograms: cumulative counts by upper bound ("+Inf" included). */
  buckets?: Record<string, string>;
  count?: string;
  sum?: string;
}

export interface ParsedFamily {
  name: string;
  help: string;
  type: "COUNTER" | "GAUGE" | "HISTOGRAM" | "SUMMARY" | "UNTYPED";
  metrics: ParsedSample[];
}

const parser = createRequire(import.meta.url)("parse-prometheus-text-format") as (text: string) => ParsedFamily[];

/**
 * The families of a scrape by name. The parser flattens a histogram's samples
 * into one, dropping their labels (it was written for unlabelled ones), so
 * histograms are parsed a second time with their TYPE lines left out, which
 * makes the parser return their _bucket, _sum and _count lines as plain
 * samples with every label; they are grouped back per label set here.
 */
export function parsePrometheus(text: string): Map<string, ParsedFamily> {
  const families = new Map(parser(text).map((f) => [f.name, f]));
  const histograms = [...families.values()].filter((f) => f.type === "HISTOGRAM").map((f) => f.name);
  if (histograms.length === 0) return families;
  // Untyped, the _bucket, _sum and _count lines of each label set start a new family each time: gather them by name.
  const untyped = new Map<string, ParsedFamily>();
  for (const f of parser(text.split("\n").filter((l) => !/^# TYPE \S+ histogram$/.test(l)).join("\n"))) {
    const seen = untyped.get(f.name);
    if (seen === undefined) untyped.set(f.name, f);
    else seen.metrics.push(...f.metrics);
  }
  for (const name of histograms) {
    const byLabels = new Map<string, ParsedSample>();
    const entry = (labels: Record<string, string>): ParsedSample => {
      const key = JSON.stringify(Object.entries(labels).sort());
      let e = byLabels.get(key);
      if (e === undefined) byLabels.set(key, (e = { labels, buckets: {} }));
      return e;
    };
    for (const m of untyped.get(`${name}_bucket`)?.metrics ?? []) {
      const { le, ...labels } = m.labels ?? {};
      entry(labels).buckets![le ?? ""] = m.value ?? "";
    }
    for (const m of untyped.get(`${name}_sum`)?.metrics ?? []) entry(m.labels ?? {}).sum = m.value ?? "";
    for (const m of untyped.get(`${name}_count`)?.metrics ?? []) entry(m.labels ?? {}).count = m.value ?? "";
    families.get(name)!.metrics = [...byLabels.values()];
  }
  return families;
}

export const dashboardPath = fileURLToPath(new URL("../../../deploy/grafana/pxd-dashboard.json", import.meta.url));

/** Every metric family a dashboard query names (a histogram's _bucket, _sum and _count as the histogram). */
export function dashboardMetrics(path = dashboardPath): Set<string> {
  const dash = JSON.parse(readFileSync(path, "utf8")) as { panels: { targets: { expr: string }[] }[]; templating: { list: { query?: unknown }[] } };
  const exprs = [...dash.panels.flatMap((p) => p.targets.map((t) => t.expr)), ...dash.templating.list.map((t) => (typeof t.query === "string" ? t.query : ""))];
  const names = new Set<string>();
  for (const e of exprs) for (const m of e.matchAll(/\bpxd_[a-z0-9_]+/g)) names.add(m[0].replace(/_(bucket|sum|count)$/, ""));
  return names;
}
