// TensorBoard's scalar smoothing: an exponential moving average, debiased so that the
// first points are not pulled towards zero (the average starts at 0 and is divided by
// 1 - weight^n after n finite points). Non-finite values pass through unsmoothed and
// leave the average as it was, so a NaN loss shows as the gap it is.
export class Smoother {
  constructor(weight) {
    this.weight = weight;
    this.last = 0;
    this.count = 0;
  }

  push(value) {
    if (!Number.isFinite(value)) return value;
    this.last = this.last * this.weight + (1 - this.weight) * value;
    this.count += 1;
    const debias = this.weight === 1 ? 1 : 1 - Math.pow(this.weight, this.count);
    return this.last / debias;
  }
}

export function smooth(values, weight) {
  const smoother = new Smoother(weight);
  return Array.from(values, (v) => smoother.push(v));
}
