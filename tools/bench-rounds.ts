/**
 * A bench cell measured once per round, and what one figure per cell is made of: the median over
 * the rounds, with every round kept. Under TCG one fio run can swing 2x from the next on the same
 * device (null_blk itself went from 49851 to 82892 IOPS between two boots, and from run to run
 * within one), so a single run per cell says more about the moment than about the device.
 */

/** Rounds per cell unless `--rounds` says otherwise. */
export const DEFAULT_ROUNDS = 3;

/** The middle value (the mean of the two middle ones for an even count); NaN for none. */
export function median(values: readonly number[]): number {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return NaN;
  const sorted = [...finite].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/**
 * Round by round, `numerator[i] / denominator[i]`: two devices measured next to each other in
 * the same round, so a drift of the guest between rounds cancels out.
 */
export function roundRatios(numerator: readonly number[], denominator: readonly number[]): number[] {
  const rounds = Math.min(numerator.length, denominator.length);
  return Array.from({ length: rounds }, (_, i) => numerator[i] / denominator[i]);
}

/** "0.48-0.61" over the finite ratios of the rounds; "" with fewer than two. */
export function formatSpread(ratios: readonly number[]): string {
  const finite = ratios.filter(Number.isFinite);
  if (finite.length < 2) return '';
  return `${Math.min(...finite).toFixed(2)}-${Math.max(...finite).toFixed(2)}`;
}

/**
 * The order of a round's steps: as given in even rounds, reversed in odd ones (ABBA), so no
 * device always runs first after the warm-up or last before the next cell.
 */
export function roundOrder<T>(steps: readonly T[], round: number): T[] {
  return round % 2 === 0 ? [...steps] : [...steps].reverse();
}
