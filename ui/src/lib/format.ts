// Numbers for people: parameter counts, bytes, durations, rates.

export function count(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}K`;
  return `${n}`;
}

export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[u]}`;
}

export function duration(seconds: number | null | undefined): string {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${r}s` : `${r}s`;
}

export function percent(p: number): string {
  return p === 0 ? "0%" : p < 0.01 ? "<0.01%" : `${p.toFixed(p < 10 ? 2 : 1)}%`;
}

/** A preview's marked text (`learned` runs wrapped in `[[` `]]`) as segments to draw. */
export function markedSegments(marked: string): { text: string; learned: boolean }[] {
  const out: { text: string; learned: boolean }[] = [];
  let learned = false;
  for (const part of marked.split(/(\[\[|\]\])/)) {
    if (part === "[[") learned = true;
    else if (part === "]]") learned = false;
    else if (part) out.push({ text: part, learned });
  }
  return out;
}
