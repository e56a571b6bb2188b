#!/usr/bin/env bash
# `finmoe merge` against mergekit on the same recipe and the same three
# models (a base and two fine-tunes of Qwen2-0.5B shape, bf16), alternating
# rounds in one run, on the CPU; each as GB/s of input read against the read
# bandwidth of those same files measured in the same round.
#
#   scripts/bench_merge.sh WORK_DIR [ROUNDS] [METHODS]
#
# METHODS: a comma list of task_arithmetic | ties | linear (default
# task_arithmetic,ties). Env: FINMOE (default build/finmoe), MERGEKIT
# (mergekit-yaml; default: the one on PATH; `none`: finmoe alone), TOKENIZER (for `finmoe init`,
# default tests/data/tokenizer/qwen3), OUT_DIR (where both write their
# output and the write probe runs; default WORK_DIR: a tmpfs such as /dev/shm
# takes the disk out of the comparison), NO_FUSED=1 (also time
# `finmoe merge --no-fused`, the libtorch path the fused kernel replaced),
# COLD=1 (the inputs are evicted from the page cache, posix_fadvise
# DONTNEED, before the read probe and before every merge: "read" is then the
# disk's read bandwidth, and every tool reads its inputs from the disk),
# MMAP=1 (also time `finmoe merge --io mmap`, reading through the mapping
# where `--io auto` reads uncached inputs past the page cache), ENGINE=1
# (also time `finmoe-engine merge`, the full command beside FINMOE, which
# loads libtorch: the process start the front end `finmoe` saves).
#
# Each round measures, besides both merges:
#   read  the three input files read once more, the fastest of one `cat`,
#         three concurrent ones (one per file) and, with COLD=1, three
#         concurrent `dd iflag=direct bs=8M` (past the page cache): from the
#         page cache, what the kernel's copy of the cached bytes costs; with
#         COLD=1 the disk's read bandwidth;
#   mem   the 2-thread memory read probe of `finmoe bench decode`;
#   write the output's size written to WORK_DIR and fsynced, as finmoe's
#         checkpoint writer does (mergekit does not fsync).
# "of read" = the merge's input GB/s over the read bandwidth (the issue's
# target: >= 80%); "I/O floor" = read + write time, the least a merge that
# reads the cached inputs and writes its output durably can take.
# Prints one line per round and method, then a summary per method with the
# load average seen and each tool's CPU time (user + system, which other
# jobs on the machine disturb less than wall time); JSON in
# WORK_DIR/results.json.
set -euo pipefail
WORK="$1"
ROUNDS="${2:-3}"
METHODS="${3:-task_arithmetic,ties}"
FINMOE="${FINMOE:-build/finmoe}"
MERGEKIT="${MERGEKIT:-mergekit-yaml}"
TOKENIZER="${TOKENIZER:-tests/data/tokenizer/qwen3}"
OUT_DIR="${OUT_DIR:-$WORK}"
mkdir -p "$WORK" "$OUT_DIR"
for s in 1 2 3; do
  [ -f "$WORK/m$s/model.safetensors" ] ||
    "$FINMOE" init "$WORK/m$s" --preset qwen2-0.5b --seed "$s" --tokenizer "$TOKENIZER" >/dev/null
done
for METHOD in ${METHODS//,/ }; do
  case "$METHOD" in
    linear) params="      weight: 0.5" ;;
    ties) params=$'      weight: 0.5\n      density: 0.5' ;;
    task_arithmetic) params="      weight: 0.5" ;;
    *) echo "bench_merge.sh: unknown method '$METHOD' (task_arithmetic, ties, linear)" >&2; exit 2 ;;
  esac
  cat > "$WORK/recipe-$METHOD.yaml" <<EOF
merge_method: $METHOD
$( [ "$METHOD" = linear ] || echo "base_model: $WORK/m1" )
models:
$( [ "$METHOD" = linear ] && printf '  - model: %s/m1\n    parameters:\n%s\n' "$WORK" "$params" )
  - model: $WORK/m2
    parameters:
$params
  - model: $WORK/m3
    parameters:
$params
dtype: bfloat16
EOF
done
# warm the page cache once
cat "$WORK"/m{1,2,3}/model.safetensors >/dev/null
python3 - "$WORK" "$ROUNDS" "$FINMOE" "$MERGEKIT" "$METHODS" "$OUT_DIR" "${NO_FUSED:-0}" "${COLD:-0}" "${MMAP:-0}" "${ENGINE:-0}" <<'PY'
import json, os, shutil, statistics, subprocess, sys, time
work, rounds, finmoe, mergekit, methods = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5].split(",")
out_dir, no_fused, cold, with_mmap = sys.argv[6], sys.argv[7] == "1", sys.argv[8] == "1", sys.argv[9] == "1"
engine = os.path.join(os.path.dirname(finmoe), "finmoe-engine") if sys.argv[10] == "1" else None
with_mergekit = mergekit != "none"
inputs = [f"{work}/m{s}/model.safetensors" for s in (1, 2, 3)]
nbytes = sum(os.path.getsize(p) for p in inputs)
out_bytes = os.path.getsize(inputs[0])  # the merged model has the base's tensors and dtype

def load():
    return os.getloadavg()[0]

def mem_probe():
    # the same 2-thread read probe `finmoe bench decode` prints
    out = subprocess.run([finmoe, "bench", "decode", f"{work}/m1", "--prefill", "1", "--batch", "1",
                          "--steps", "1", "--repeats", "1", "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["bandwidth_gb_s"]

def evict():  # COLD=1: the inputs leave the page cache (no privileges needed)
    if not cold:
        return
    for p in inputs:
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

def read_probe():
    # the faster of one `cat` of the three files and three concurrent ones
    # (one per file, as a merge maps them: from the disk, the deeper queue
    # reads faster)
    evict()
    t = time.perf_counter()
    subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)
    one = time.perf_counter() - t
    evict()
    t = time.perf_counter()
    procs = [subprocess.Popen(["cat", p], stdout=subprocess.DEVNULL) for p in inputs]
    if any(p.wait() != 0 for p in procs):
        sys.exit("bench_merge.sh: cat failed")
    three = time.perf_counter() - t
    direct = None
    if cold:  # from the disk also past the page cache, as `finmoe merge --io auto` reads then
        evict()
        t = time.perf_counter()
        procs = [subprocess.Popen(["dd", f"if={p}", "of=/dev/null", "bs=8M", "iflag=direct"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in inputs]
        if any(p.wait() != 0 for p in procs):
            sys.exit("bench_merge.sh: dd iflag=direct failed")
        direct = time.perf_counter() - t
    print(f"read probe: one cat {nbytes / one / 1e9:.2f} GB/s, three concurrent {nbytes / three / 1e9:.2f} GB/s"
          + (f", three concurrent dd iflag=direct bs=8M {nbytes / direct / 1e9:.2f} GB/s" if direct else ""),
          flush=True)
    return min(one, three, direct or three)

def write_probe():
    path, block = f"{out_dir}/write-probe", b"\x01" * (16 << 20)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    left = out_bytes
    while left > 0:
        left -= os.write(fd, block[:min(left, len(block))])
    os.fsync(fd)
    os.close(fd)
    s = time.perf_counter() - t
    os.remove(path)
    return s

cpu = {}  # command -> user + system CPU seconds of its last run (load-independent-ish)

merge_s = {}  # command -> the merge's own seconds (finmoe merge --json), without the process start

def timed(cmd, out):
    shutil.rmtree(out, ignore_errors=True)
    evict()
    json_out = cmd[0] in (finmoe, engine)
    if json_out:
        cmd = cmd + ["--json"]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE if json_out else subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    text = p.stdout.read() if json_out else None
    _, status, usage = os.wait4(p.pid, 0)
    s = time.perf_counter() - t
    if json_out and os.waitstatus_to_exitcode(status) == 0:
        merge_s["engine" if cmd[0] == engine else " ".join(cmd[4:-1])] = json.loads(text)["seconds"]
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench_merge.sh: {' '.join(cmd)} failed")
    cpu[" ".join([cmd[0]] + [a for a in cmd[4:] if a != "--json"])] = usage.ru_utime + usage.ru_stime
    shutil.rmtree(out, ignore_errors=True)
    return s

print(f"inputs: 3 files, {nbytes / 1e9:.2f} GB, {'read from the disk (evicted before each run)' if cold else 'in the page cache'}; "
      f"output {out_bytes / 1e9:.2f} GB into {out_dir}; load average {load():.2f}", flush=True)
rows = []
for r in range(1, rounds + 1):
    mem = mem_probe()
    rd = read_probe()
    wr = write_probe()
    read_bw = nbytes / rd / 1e9
    for m in methods:
        recipe = f"{work}/recipe-{m}.yaml"
        ld = load()
        f = timed([finmoe, "merge", recipe, f"{out_dir}/out-finmoe"], f"{out_dir}/out-finmoe")
        k = timed([mergekit, recipe, f"{out_dir}/out-mergekit", "--lazy-unpickle"],
                  f"{out_dir}/out-mergekit") if with_mergekit else None
        t = timed([finmoe, "merge", recipe, f"{out_dir}/out-finmoe", "--no-fused"], f"{out_dir}/out-finmoe") if no_fused else None
        mm = timed([finmoe, "merge", recipe, f"{out_dir}/out-finmoe", "--io", "mmap"], f"{out_dir}/out-finmoe") if with_mmap else None
        e = timed([engine, "merge", recipe, f"{out_dir}/out-finmoe"], f"{out_dir}/out-finmoe") if engine else None
        x = {"round": r, "method": m, "load": ld, "mem_gb_s": mem, "read_s": rd, "read_gb_s": read_bw,
             "write_s": wr, "write_gb_s": out_bytes / wr / 1e9, "finmoe_s": f,
             "finmoe_gb_s": nbytes / f / 1e9, "finmoe_cpu_s": cpu[finmoe],
             "finmoe_merge_s": merge_s[""], "finmoe_merge_gb_s": nbytes / merge_s[""] / 1e9}
        if k is not None:
            x.update({"mergekit_s": k, "mergekit_gb_s": nbytes / k / 1e9, "mergekit_cpu_s": cpu[mergekit]})
        if t is not None:
            x["libtorch_path_s"] = t
            x["libtorch_path_cpu_s"] = cpu[finmoe + " --no-fused"]
        if mm is not None:
            x.update({"mmap_s": mm, "mmap_gb_s": nbytes / mm / 1e9, "mmap_cpu_s": cpu[finmoe + " --io mmap"],
                      "mmap_merge_s": merge_s["--io mmap"]})
        if e is not None:
            x.update({"engine_s": e, "engine_gb_s": nbytes / e / 1e9, "engine_cpu_s": cpu[engine],
                      "engine_merge_s": merge_s["engine"]})
        rows.append(x)
        print(f"round {r} {m}: finmoe {f:.2f} s ({x['finmoe_gb_s']:.2f} GB/s = {x['finmoe_gb_s'] / read_bw:.0%} of read; "
              f"the merge alone {x['finmoe_merge_s']:.2f} s = {x['finmoe_merge_gb_s'] / read_bw:.0%} of read "
              f"{read_bw:.2f} GB/s, {x['finmoe_gb_s'] / mem:.0%} of mem {mem:.1f} GB/s; I/O floor {rd + wr:.2f} s) "
              + (f"| mergekit {k:.2f} s ({x['mergekit_gb_s']:.2f} GB/s) | finmoe {k / f:.1f}x faster "
                 f"| CPU s finmoe {x['finmoe_cpu_s']:.2f} mergekit {x['mergekit_cpu_s']:.2f}"
                 if k is not None else f"| CPU s finmoe {x['finmoe_cpu_s']:.2f}")
              + (f" | --no-fused {t:.2f} s ({x['libtorch_path_cpu_s']:.2f} CPU s)" if t is not None else "")
              + (f" | --io mmap {mm:.2f} s ({x['mmap_gb_s'] / read_bw:.0%} of read, merge alone {x['mmap_merge_s']:.2f} s, "
                 f"{x['mmap_cpu_s']:.2f} CPU s)" if mm is not None else "")
              + (f" | finmoe-engine {e:.2f} s ({x['engine_gb_s'] / read_bw:.0%} of read, merge alone "
                 f"{x['engine_merge_s']:.2f} s)" if e is not None else "")
              + f" | load {ld:.1f}",
              flush=True)
summary = {}
for m in methods:
    mine = [x for x in rows if x["method"] == m]
    med = {k: statistics.median(x[k] for x in mine) for k in mine[0] if k not in ("round", "method")}
    # ratios per round (each merge against its own round's probe), then the median
    rel = lambda key: statistics.median(x[key] / x["read_gb_s"] for x in mine)
    med["finmoe_of_read"], med["finmoe_merge_of_read"] = rel("finmoe_gb_s"), rel("finmoe_merge_gb_s")
    summary[m] = med
    floor = med["read_s"] + med["write_s"]
    print(f"median {m}: finmoe {med['finmoe_s']:.2f} s = {med['finmoe_gb_s']:.2f} GB/s of input = "
          f"{med['finmoe_of_read']:.0%} of the read bandwidth {med['read_gb_s']:.2f} GB/s (per-round ratios) "
          f"({'meets' if med['finmoe_of_read'] >= 0.8 else 'misses'} 80%), "
          f"{med['finmoe_gb_s'] / med['mem_gb_s']:.0%} of the memory probe {med['mem_gb_s']:.1f} GB/s; "
          f"the merge alone (without the process start) {med['finmoe_merge_s']:.2f} s = "
          f"{med['finmoe_merge_of_read']:.0%} of read; "
          f"I/O floor {floor:.2f} s (read {med['read_s']:.2f} + write+fsync {med['write_s']:.2f}) = "
          f"{floor / med['finmoe_s']:.0%} of finmoe's time | "
          + (f"mergekit {med['mergekit_s']:.2f} s = {med['mergekit_gb_s']:.2f} GB/s | "
             f"finmoe {med['mergekit_s'] / med['finmoe_s']:.1f}x faster | "
             f"CPU s: finmoe {med['finmoe_cpu_s']:.2f}, mergekit {med['mergekit_cpu_s']:.2f} | "
             if with_mergekit else f"CPU s: finmoe {med['finmoe_cpu_s']:.2f} | ")
          + (f"--no-fused {med['libtorch_path_s']:.2f} s ({med['libtorch_path_cpu_s']:.2f} CPU s) | "
             if 'libtorch_path_s' in med else "")
          + (f"--io mmap {med['mmap_s']:.2f} s = {rel('mmap_gb_s'):.0%} of read, the merge alone "
             f"{statistics.median(nbytes / x['mmap_merge_s'] / 1e9 / x['read_gb_s'] for x in mine):.0%} "
             f"({med['mmap_cpu_s']:.2f} CPU s) | " if 'mmap_s' in med else "")
          + (f"finmoe-engine {med['engine_s']:.2f} s = {rel('engine_gb_s'):.0%} of read (libtorch loaded), "
             f"the merge alone {med['engine_merge_s']:.2f} s | " if 'engine_s' in med else "") +
          f"load {min(x['load'] for x in mine):.1f}-{max(x['load'] for x in mine):.1f}")
json.dump({"input_bytes": nbytes, "output_bytes": out_bytes, "cold": cold, "rounds": rows, "median": summary},
          open(f"{work}/results.json", "w"), indent=2)
PY
