"""`finmoe data ...` through the real binary: outputs, exit code 2 with the
file and line for bad input, no overwriting, nothing partial written, and
`data selfqa` against `finmoe serve` on a tiny model made with `finmoe init`.
Standard-library Python. argv: FINMOE_BINARY TEST_DATA_DIR"""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "serve"))
import serve_util  # noqa: E402

FINMOE, DATA = serve_util.args()
FAILURES = []


def run(*argv):
    p = subprocess.run([FINMOE, "data"] + list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p.returncode, p.stdout


def check(cond, what, out=""):
    if not cond:
        FAILURES.append(what + ("\n" + out if out else ""))
        print("FAIL: " + what)
    else:
        print("ok: " + what)


def write(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def main():
    scratch = serve_util.ScratchDir("finmoe-data-cli-")
    d = scratch.path
    try:
        rc, out = run("amounts", "upper", "1409.50", "325.04", "0.05")
        check(rc == 0 and out.split() == ["壹仟肆佰零玖元伍角", "叁佰贰拾伍元零肆分", "伍分"], "amounts upper", out)
        rc, out = run("amounts", "number", "人民币壹拾万零柒仟元零伍角叁分")
        check(rc == 0 and out.strip() == "107000.53", "amounts number reads a variant", out)
        rc, out = run("amounts", "upper", "--", "-1")
        check(rc == 2 and "negative" in out, "a negative amount exits 2", out)
        rc, out = run("amounts", "number", "壹佰零伍拾元")
        check(rc == 2 and "零 where no digit is zero" in out, "a misplaced 零 exits 2 naming it", out)

        pool = os.path.join(d, "pool.jsonl")
        lines = [json.dumps({"text": "文本%d 利率与债券价格的关系说明%d" % (i % 5, i % 5), "category": "c%d" % (i % 2)},
                            ensure_ascii=False) for i in range(20)]
        write(pool, lines[:7] + ["{not json"] + lines[7:])
        out_path = os.path.join(d, "dedup.jsonl")
        rc, out = run("dedup", pool, "--out", out_path)
        check(rc == 2 and "pool.jsonl:8:" in out and not os.path.exists(out_path),
              "a malformed line exits 2 with file:line and writes nothing", out)
        report = os.path.join(d, "dedup.json")
        rc, out = run("dedup", pool, "--out", out_path, "--skip-bad", "--report", report)
        kept = open(out_path, encoding="utf-8").read().splitlines() if rc == 0 else []
        check(rc == 0 and len(kept) == 5 and kept == lines[:5], "dedup keeps the first of each of 5 texts", out)
        if rc == 0:
            j = json.load(open(report))
            check(j["removed_exact"] == 15 and j["skipped"] == 1 and len(j["clusters"]) == 5, "dedup report", str(j))
        rc, out = run("dedup", pool, "--out", out_path, "--skip-bad")
        check(rc == 2 and "refusing to overwrite" in out, "an existing output is refused", out)

        rc, out = run("compress", pool, "--out", os.path.join(d, "c.jsonl"), "--strata", "category", "--target", "4",
                      "--skip-bad")
        check(rc == 0 and "category=c0" in out and len(open(os.path.join(d, "c.jsonl")).read().splitlines()) == 4,
              "compress keeps the target", out)
        rc, out = run("compress", pool, "--out", os.path.join(d, "c2.jsonl"), "--strata", "nope", "--target", "4")
        check(rc == 2 and "no tag field 'nope'" in out, "compress names a missing tag field", out)

        rc, out = run("refusal", "--out", os.path.join(d, "r.jsonl"), "-n", "10", "--cut-depth", "3")
        check(rc == 2 and "depth 3" in out, "refusal refuses an impossible cut depth", out)
        sft = os.path.join(d, "sft.jsonl")
        write(sft, [json.dumps({"messages": [{"role": "user", "content": "存款10000元一年利息多少？"},
                                             {"role": "assistant", "content": "看利率。"}]}, ensure_ascii=False),
                    json.dumps({"instruction": "What is a bond?", "output": "A debt security."})])
        rc, out = run("persona", sft, "--out", os.path.join(d, "p.jsonl"), "--variants", "2", "--seed", "1")
        recs = [json.loads(x) for x in open(os.path.join(d, "p.jsonl"), encoding="utf-8")] if rc == 0 else []
        check(rc == 0 and len(recs) == 4 and recs[0]["messages"][1]["content"] == "看利率。"
              and recs[0]["persona"] in recs[0]["messages"][0]["content"], "persona writes 2 variants per record", out)
        rc, out = run("persona", sft, "--out", os.path.join(d, "p2.jsonl"), "--styles", "rude")
        check(rc == 2 and "unknown style 'rude'" in out and not os.path.exists(os.path.join(d, "p2.jsonl")),
              "persona names an unknown style", out)
        rc, out = run("persona", pool, "--out", os.path.join(d, "p3.jsonl"))
        check(rc == 2 and "pool.jsonl:1: no instruction" in out, "persona names a record without an instruction", out)
        rc, out = run("refusal", "--out", os.path.join(d, "r2.jsonl"), "-n", "2", "--model-url", "localhost:1")
        check(rc == 2 and "--model-url: expected http://" in out, "refusal names a bad --model-url", out)
        rc, out = run("mix", "--text", pool, "--out", os.path.join(d, "m.jsonl"))
        check(rc == 2 and "pool.jsonl:8:" in out, "mix names the malformed line", out)

        # selfqa against finmoe serve: a random tiny model writes no questions,
        # so every document is one successful request and no pair
        model = serve_util.make_tiny_model(FINMOE, DATA, d)
        server = serve_util.Server(FINMOE, model, "--served-model-name", "tiny")
        try:
            docs = os.path.join(d, "docs.jsonl")
            write(docs, [json.dumps({"text": "利率是资金的价格。"}, ensure_ascii=False),
                         json.dumps({"text": "A bond pays coupons."})])
            qa = os.path.join(d, "qa.jsonl")
            # retries allowed: under a loaded suite a kept-alive connection can
            # close between requests; the request count is what is checked
            rc, out = run("selfqa", docs, "--out", qa, "--url", server.url + "/v1", "--model", "tiny",
                          "--max-tokens", "8", "--retries", "2")
            check(rc == 0 and re.search(r"requests 2 \(\d+ retries\)", out) and os.path.exists(qa)
                  and not os.path.exists(qa + ".partial"), "selfqa through finmoe serve", out)
            rc, out = run("selfqa", docs, "--out", os.path.join(d, "qa2.jsonl"), "--url", server.url,
                          "--model", "other", "--retries", "0")
            check(rc == 2 and "HTTP 400" in out and "model_not_found" in out and "docs.jsonl:1" in out,
                  "selfqa names a refused request", out)
            # the model stages: a random model's replies fail the number checks and
            # the templates stay, counted; the runs complete
            rr = os.path.join(d, "rm.jsonl")
            rc, out = run("refusal", "--out", rr, "-n", "3", "--model-url", server.url, "--model", "tiny",
                          "--max-tokens", "8", "--retries", "2")
            recs = [json.loads(x) for x in open(rr, encoding="utf-8")] if rc == 0 else []
            check(rc == 0 and len(recs) == 3 and all("rewritten" in r for r in recs)
                  and not os.path.exists(rr + ".partial"), "refusal --model-url through finmoe serve", out)
            pm = os.path.join(d, "pm.jsonl")
            rc, out = run("persona", sft, "--out", pm, "--url", server.url, "--model", "tiny", "--max-tokens", "8",
                          "--retries", "2")
            recs = [json.loads(x) for x in open(pm, encoding="utf-8")] if rc == 0 else []
            check(rc == 0 and len(recs) == 2 and recs[0]["persona_source"] == "template"
                  and "10000" in recs[0]["messages"][0]["content"], "persona --url through finmoe serve", out)
        finally:
            server.stop()
    finally:
        scratch.cleanup()
    if FAILURES:
        print("%d failed" % len(FAILURES))
        sys.exit(1)


if __name__ == "__main__":
    main()
