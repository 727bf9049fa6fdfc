// The ranks of one distributed job: rank 0's run id is the job's, and rank r's run is
// `<job>.r<r>` (trainer_hooks/agreement.py: job_run_id). Pure functions, unit-tested.

const RANK_SUFFIX = /^(.+)\.r(\d+)$/;

// The job and rank a run id names: { job, rank } (rank 0 for a run that is its job).
export function jobOf(run) {
  const found = RANK_SUFFIX.exec(run);
  return found ? { job: found[1], rank: Number(found[2]) } : { job: run, rank: 0 };
}

// The run ids of a job of `world` ranks, rank 0 first.
export function rankRuns(job, world) {
  return Array.from({ length: Math.max(world, 1) }, (_, r) => (r === 0 ? job : `${job}.r${r}`));
}

// The index's rows: a job's other ranks fold into rank 0's row (`ranks`: every rank's
// row, rank 0's first); a rank whose rank 0 is not listed stays a row of its own.
export function foldRanks(runs) {
  const byId = new Map(runs.map((r) => [r.run, r]));
  const members = new Map();
  const rows = [];
  for (const r of runs) {
    const { job, rank } = jobOf(r.run);
    if (rank > 0 && r.world > 1 && byId.has(job)) {
      if (!members.has(job)) members.set(job, []);
      members.get(job).push(r);
    } else {
      rows.push(r);
    }
  }
  return rows.map((r) => (members.has(r.run)
    ? { ...r, ranks: [r, ...members.get(r.run).sort((a, b) => a.rank - b.rank)] } : r));
}
