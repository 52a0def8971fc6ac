import { describe, expect, it } from "vitest";
import { bytes, count, duration, percent } from "./format";

describe("format", () => {
  it("counts parameters", () => {
    expect(count(70_553_706_496)).toBe("70.55B");
    expect(count(1_234_567)).toBe("1.23M");
    expect(count(12_345)).toBe("12.3K");
    expect(count(999)).toBe("999");
  });
  it("sizes, durations and percentages", () => {
    expect(bytes(512)).toBe("512 B");
    expect(bytes(1536)).toBe("1.50 KiB");
    expect(bytes(3 * 1024 ** 3)).toBe("3.00 GiB");
    expect(duration(59.6)).toBe("1m 0s");
    expect(duration(3725)).toBe("1h 2m");
    expect(duration(null)).toBe("–");
    expect(percent(0)).toBe("0%");
    expect(percent(0.001)).toBe("<0.01%");
    expect(percent(37.5)).toBe("37.5%");
  });
});

import { markedSegments } from "./format";
describe("marked preview text", () => {
  it("splits learned runs out", () => {
    expect(markedSegments("user: hi [[reply]] x[[y]]")).toEqual([
      { text: "user: hi ", learned: false },
      { text: "reply", learned: true },
      { text: " x", learned: false },
      { text: "y", learned: true },
    ]);
  });
});
