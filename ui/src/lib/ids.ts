// Layer-id text in its canonical form ("1-2,10-15,20"), as the backend writes it. Parsing what users type is the
// backend's job (`check_layer_ids`), so its errors are the planner's; here only canonical text is read and written.

/** Canonical text for a set of ids: ascending, runs of two or more as ranges. */
export function formatIds(ids: Iterable<number>): string {
  const sorted = [...new Set(ids)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(",");
}

/** The ids of canonical text (as returned by the backend); throws on anything else. */
export function parseCanonical(text: string): number[] {
  if (text === "") return [];
  const ids: number[] = [];
  for (const part of text.split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new Error(`not canonical layer ids: ${JSON.stringify(text)}`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    for (let i = lo; i <= hi; i++) ids.push(i);
  }
  return ids;
}
