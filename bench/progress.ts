// A progress bar on stderr: "calibrate [#########...........]  45%", redrawn in place.
const _enc = new TextEncoder();

/**
 * A progress reporter that redraws a bar on stderr when the percentage changes.
 * @param width bar width in characters
 * @returns (label, done, total) => void; a finished bar ends its line
 */
export function stderrProgress(width = 30): (label: string, done: number, total: number) => void {
  let last = "";
  return (label, done, total) => {
    const pct = total > 0 ? Math.min(100, Math.floor((100 * done) / total)) : 100;
    const key = `${label}${pct}`;
    if (key === last) return;
    last = key;
    const fill = Math.round((width * pct) / 100);
    const line = `\r${label.padEnd(10)} [${"#".repeat(fill)}${".".repeat(width - fill)}] ${
      String(pct).padStart(3)
    }%${done >= total ? "\n" : ""}`;
    Deno.stderr.writeSync(_enc.encode(line));
  };
}
