// What the loss charts (a run's LossChart, the runs' CompareChart) share: theme colours read from the CSS, and the
// uPlot options of a loss-over-steps chart around their own series.
import type uPlot from "uplot";

/** A CSS custom property of the theme (`--muted`), for canvas drawing. */
export function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/** Loss against whole steps, linear or log scale, with `series` after the x series. */
export function lossChartOptions(
  width: number,
  height: number,
  logScale: boolean,
  series: uPlot.Series[],
  hooks: uPlot.Hooks.Arrays = {},
): uPlot.Options {
  return {
    width,
    height,
    scales: { x: { time: false }, y: { distr: logScale ? 3 : 1 } },
    axes: [
      {
        label: "step",
        stroke: cssVar("--muted"),
        grid: { stroke: cssVar("--border") },
        // Steps are whole numbers: no 1.25-step ticks on a short run.
        incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000],
        values: (_u: uPlot, ticks: number[]) => ticks.map((t) => `${t}`),
      },
      { label: "loss", stroke: cssVar("--muted"), grid: { stroke: cssVar("--border") } },
    ],
    series: [{}, ...series],
    legend: { live: false },
    hooks,
  };
}
