"""volstack benchmarks, each printed as a ratio against a limit measured in the same run.

    .venv/bin/python bench/run.py [--quick] [--no-pg] [--profile]
                                  [--no-storage | --storage-only | --rbd | --snapshots-only]
                                  [--download | --download-only]

The storage figures (4, 5) start a `volstack agent` with a QEMU guest and use the machine's one nfs-ganesha
(tests/nfsserver.py): do not run them while the test suite runs (VOLSTACK_NFS_WAIT=seconds to wait for it).
"""
import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import bench_api  # noqa: E402
import bench_download  # noqa: E402
import bench_encryption  # noqa: E402
import bench_transfers  # noqa: E402
import bench_jobs  # noqa: E402
import bench_rbd  # noqa: E402
import bench_snapshots  # noqa: E402
import bench_storage  # noqa: E402
import bench_templates  # noqa: E402
import loadgen  # noqa: E402

QUICK = dict(rounds=1, duration=1.5, jobs=600, async_jobs=120, inproc=300,
             attach_n=15, mig_mib=64, mig_rounds=2, sim_pairs=120,
             dl_rate_mib=32, dl_paced_mib=64, dl_plain_mib=256, dl_rounds=2, tmpl_mib=128, root_n=5,
             snap_mib=64, snap_rounds=2, enc_mib=32, enc_rounds=1, enc_small=600)
FULL = dict(rounds=2, duration=5.0, jobs=3000, async_jobs=400, inproc=1000,
            attach_n=30, mig_mib=256, mig_rounds=5, sim_pairs=400,
            dl_rate_mib=32, dl_paced_mib=192, dl_plain_mib=1024, dl_rounds=3, tmpl_mib=512, root_n=10,
            snap_mib=256, snap_rounds=3, enc_mib=128, enc_rounds=3, enc_small=2000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs: about a minute in all")
    ap.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL job benchmark")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of in-process listZones")
    ap.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--threads", type=int, default=4, help="connections per client process (default 4)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--no-storage", action="store_true", help="skip the storage figures (4-6)")
    which.add_argument("--storage-only", action="store_true", help="only the storage figures (4-6)")
    which.add_argument("--rbd", action="store_true", help="only the RBD figures, on a throwaway Ceph cluster")
    which.add_argument("--snapshots-only", action="store_true", help="only the snapshot figures (12)")
    which.add_argument("--encryption-only", action="store_true", help="only the encryption figures (13)")
    dl = ap.add_mutually_exclusive_group()
    dl.add_argument("--download", action="store_true", help="also the template download figures (8, 9)")
    dl.add_argument("--download-only", action="store_true", help="only the template download figures (8, 9)")
    tr = ap.add_mutually_exclusive_group()
    tr.add_argument("--transfers", action="store_true", help="also the extract/upload figures (11)")
    tr.add_argument("--transfers-only", action="store_true", help="only the extract/upload figures (11)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)   # "Task queue depth is N" under load
    t0 = time.monotonic()
    rows, empty_jobs = [], None
    with tempfile.TemporaryDirectory(prefix="volstack-bench-") as tmp:
        if args.download_only or args.transfers_only:
            args.storage_only = args.no_storage = True
        if args.rbd:
            rows += bench_rbd.rbd_rows(Path(tmp), cfg)
        elif args.snapshots_only:
            rows += bench_snapshots.rows(Path(tmp), cfg)
        elif args.encryption_only:
            rows += bench_encryption.rows(Path(tmp), cfg)
        elif not args.storage_only:
            rows, async_result = api_rows(Path(tmp), cfg, args)
            n = cfg["jobs"]
            j = bench_jobs.job_figures(f"sqlite:///{Path(tmp) / 'jobs.db'}", n)
            empty_jobs = j["jobs"]
            rows += [(f"empty jobs, SQLite, N={n}, 4 workers", f"{j['jobs']:,.0f} jobs/s",
                      f"{j['raw']:,.0f} INSERT+UPDATE pairs/s", j["jobs"] / j["raw"])] + job_detail(j)
            a = async_result
            rows.append((f"disableAccount via API + polling, N={a.requests}", f"{a.rate:,.0f} jobs/s",
                         "empty SQLite jobs above", a.rate / j["jobs"]))
            if not args.no_pg:
                rows += pg_rows(n)
        if not args.no_storage and not args.rbd and not args.snapshots_only and not args.encryption_only:
            rows += bench_storage.real_rows(Path(tmp), cfg)
            rows += bench_storage.sim_rows(Path(tmp), cfg, args.procs, args.threads, empty_jobs)
            rows += bench_templates.rows(Path(tmp), cfg)
            rows += bench_snapshots.rows(Path(tmp), cfg)
            rows += bench_encryption.rows(Path(tmp), cfg)
        if args.download or args.download_only:
            rows += bench_download.rows(Path(tmp), cfg)
        if args.transfers or args.transfers_only:
            rows += bench_transfers.rows(Path(tmp), cfg)
    print()
    print_table(rows)
    print(f"\n({os.cpu_count()} CPUs, {args.procs}x{args.threads} client connections, "
          f"total {time.monotonic() - t0:.0f} s)")


def api_rows(tmp: Path, cfg: dict, args) -> tuple[list[tuple], loadgen.Result]:
    api = bench_api.ApiBench(tmp)
    try:
        vs, dn = api.round_trips(rounds=cfg["rounds"], duration=cfg["duration"], procs=args.procs,
                                 threads=args.threads)
        sign_us = loadgen.sign_cost_us(api.target, bench_api.LIST_ZONES)
        ip = api.in_process(cfg["inproc"], profile=args.profile)
        a = api.async_jobs(cfg["async_jobs"], procs=args.procs, threads=args.threads)
    finally:
        api.stop()
    if a.errors:
        raise RuntimeError(f"async API run: {a.errors} failed calls or jobs")
    return [(f"signed listZones, HTTP, {args.procs * args.threads} keep-alive conns", f"{vs.rate:,.0f} req/s",
             f"{dn.rate:,.0f} req/s (do-nothing WSGI)", vs.rate / dn.rate),
            ("  client CPU per request (volstack / do-nothing)", f"{vs.client_us_per_req:,.0f} us",
             f"{dn.client_us_per_req:,.0f} us", None),
            ("  client: build + sign one URL", f"{sign_us:,.0f} us", "", None),
            ("  ApiApp.handle(listZones) in-process, 1 thread", f"{1e6 / ip['us']:,.0f} req/s",
             f"{ip['us']:,.0f} us/req", None),
            ("    of which in the DB driver's execute()", f"{ip['driver_us']:,.0f} us",
             f"{ip['statements']:.1f} statements/req", None)], a


def pg_rows(n: int) -> list[tuple]:
    try:
        from pgserver import PostgresServer
        pg = PostgresServer()
    except Exception as exc:      # PostgreSQL is not installed
        return [("empty jobs, PostgreSQL", "skipped", str(exc).splitlines()[0][:60], None)]
    try:
        pg.start()
        j = bench_jobs.job_figures(pg.url(), n)
    except subprocess.CalledProcessError as exc:     # e.g. no postgres user to run it as
        return [("empty jobs, PostgreSQL", "skipped", (exc.stderr or str(exc)).strip()[:60], None)]
    finally:
        pg.stop()
    return [(f"empty jobs, PostgreSQL, N={n}, 4 workers", f"{j['jobs']:,.0f} jobs/s",
             f"{j['raw']:,.0f} INSERT+UPDATE pairs/s", j["jobs"] / j["raw"])] + job_detail(j)


def job_detail(j: dict) -> list[tuple]:
    return [("  submit phase (1 tx per job, workers running)", f"{j['submits']:,.0f} jobs/s", "", None),
            ("  DB driver execute() time, all threads", f"{j['driver_us']:,.0f} us/job",
             f"{j['statements']:.1f} statements/job", None)]


def print_table(rows) -> None:
    head = ("figure", "volstack", "limit (same run)", "ratio")
    cells = [head] + [(a, b, c, "" if r is None else f"{r:.3f}") for a, b, c, r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    for k, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
