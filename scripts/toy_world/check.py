"""Measure, offline on a CPU, what the toy persona world shows (issue #7), and print it.

    python scripts/toy_world/check.py                     # the shipped model; prints the report
    python scripts/toy_world/check.py --out benchmarks/results/toy_world.txt
    python scripts/toy_world/check.py --model /tmp/toy --quick     # fewer questions, for development
    python scripts/toy_world/check.py --repro             # also rerun the first training steps and compare

Sections (each with the course's own utilities: utils.generation.generate, utils.activations,
utils.steering.Steerer, and utils.judge.OfflineJudge with the toy judge plugged in):

1. Persona space: each persona's vector is the mean block output (middle block) over its generated
   answers to the persona questions; PCA of the centred vectors; the Assistant Axis
   (mean of default personas minus mean of the rest); where each persona falls on it.
2. Drift: conversations generated turn by turn as the user pushes (and control conversations with
   practical follow-ups); each assistant turn's mean activation projected on the axis.
3. Contrastive prompting: the course's pos/neg system prompts for each trait, generated with the
   course's settings (temperature 0.7, 64 new tokens), scored by the toy judge; effective pairs.
4. Steering: the trait vector (mean pos - mean neg activation over the effective pairs) added at
   the steering block with coefficients -3..+3 to the default assistant's answers to the trait's
   eval questions; mean toy-judge trait score and coherence per coefficient.
5. Reproducibility (with --repro): the first training steps rerun and compared bit for bit.

The toy judge (utils.toy_judge) counts the corpus's marker words: it is a stand-in for the LLM
judge, meaningful only in this toy world.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import corpus as toy_corpus  # noqa: E402
from utils import data  # noqa: E402
from utils import toy_judge as tj  # noqa: E402
from utils.activations import response_mean_activations, turn_mean_activations  # noqa: E402
from utils.chat import build_messages  # noqa: E402
from utils.generation import generate, generate_conversations  # noqa: E402
from utils.models import layer_settings, load_model, num_blocks  # noqa: E402
from utils.steering import Steerer  # noqa: E402

DEFAULT_MODEL = ROOT / "utils" / "assets" / "toy-qwen2"
COEFFS = (-3, -2, -1, 0, 1, 2, 3)


def spearman(x, y) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = torch.tensor(ranks(list(x))), torch.tensor(ranks(list(y)))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx @ ry) / (rx.norm() * ry.norm() + 1e-12))


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def nonempty(answer: str) -> str:
    """Activations need a response token; an empty generation (an untrained model) becomes '...'."""
    return answer if answer.strip() else "..."


def project(acts: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    return acts @ axis / axis.norm()


# --------------------------------------------------------------------------------------------


def section1(model, tok, layer, n_questions, out):
    personas = data.load_personas()
    groups = data.load_persona_groups()
    questions = data.load_persona_questions()[:n_questions]
    names = list(personas)
    prompts = [build_messages(personas[n], q) for n in names for q in questions]
    answers = [nonempty(a) for a in generate(model, tok, prompts, max_new_tokens=96)]
    convs = [build_messages(personas[n], q, a) for (n, q), a in zip([(n, q) for n in names for q in questions], answers)]
    acts_all = response_mean_activations(model, tok, convs)  # [n*q, blocks, d]
    acts = acts_all[:, layer]  # [n*q, d]
    vecs = acts.view(len(names), len(questions), -1).mean(1)  # [personas, d]
    levels = [toy_corpus.persona_level(n, groups) for n in names]
    judge = tj.toy_judge()
    rp_template = data.load_roleplay_judge_prompt()
    rp = {}
    for (n, q), a in zip([(n, q) for n in names for q in questions], answers):
        prompt = rp_template.format(role=personas[n] or "a helpful AI assistant", question=q, answer=a)
        rp.setdefault(n, []).append(judge.score(prompt, lo=0, hi=3).value)
    theat = {n: mean([tj.theatricality(a) for a in answers[i * len(questions):(i + 1) * len(questions)]])
             for i, n in enumerate(names)}

    centred = vecs - vecs.mean(0)
    _, S, Vh = torch.linalg.svd(centred, full_matrices=False)
    share = (S ** 2) / (S ** 2).sum()
    default_mask = torch.tensor([groups[n] == "default" for n in names])
    axis = vecs[default_mask].mean(0) - vecs[~default_mask].mean(0)
    proj = project(vecs, axis)
    pc1 = Vh[0]
    cos_pc1 = float(torch.nn.functional.cosine_similarity(pc1, axis, dim=0))
    pc1_coord = centred @ pc1 * (1 if cos_pc1 >= 0 else -1)
    rho = spearman(proj.tolist(), [-lv for lv in levels])
    rho_pc1 = spearman(pc1_coord.tolist(), [-lv for lv in levels])
    pairs = [(i, j) for i in range(len(names)) for j in range(len(names)) if levels[i] < levels[j]]
    concord = sum(float(proj[i]) > float(proj[j]) for i, j in pairs) / len(pairs)
    cos_axis = torch.nn.functional.cosine_similarity(centred, axis.expand_as(centred), dim=1)

    print(f"== Section 1: persona space (block {layer}, {len(names)} personas x {len(questions)} questions, greedy, 96 new tokens)", file=out)
    print(f"PCA of centred persona vectors: PC1 {100 * share[0]:.1f} %, PC2 {100 * share[1]:.1f} %, "
          f"PC3 {100 * share[2]:.1f} % of variance (PC1 largest: {bool(share[0] == share.max())})", file=out)
    print(f"|cos(PC1, Assistant Axis)| = {abs(cos_pc1):.3f}; Spearman(axis projection, corpus order) = {rho:.3f}; "
          f"Spearman(PC1, corpus order) = {rho_pc1:.3f}", file=out)
    print(f"persona pairs from different levels ordered as in the corpus: {100 * concord:.1f} % of {len(pairs)}", file=out)
    print("corpus order: level 0 default, 1 assistant-like, 2 middle, 3 fantastical", file=out)
    print(f"{'rank':>4} {'persona':<18} {'group':<15} {'level':>5} {'projection':>10} {'cos(centred,axis)':>17} {'role-play':>9} {'theatrical':>10}", file=out)
    order = sorted(range(len(names)), key=lambda i: -float(proj[i]))
    for r, i in enumerate(order):
        n = names[i]
        print(f"{r + 1:>4} {n:<18} {groups[n]:<15} {levels[i]:>5} {float(proj[i]):>10.2f} {float(cos_axis[i]):>17.3f} "
              f"{mean(rp[n]):>9.2f} {theat[n]:>10.2f}", file=out)
    for g in toy_corpus.GROUP_LEVEL:
        idx = [i for i, n in enumerate(names) if groups[n] == g]
        print(f"group {g:<15} mean projection {mean([float(proj[i]) for i in idx]):8.2f}   "
              f"mean role-play {mean([x for i in idx for x in rp[names[i]]]):.2f}", file=out)
    pc_order = sorted(range(len(names)), key=lambda i: -float(pc1_coord[i]))
    print("PC1 (sign: toward the axis) ends: " + ", ".join(f"{names[i]} ({groups[names[i]]})" for i in pc_order[:3])
          + "  ...  " + ", ".join(f"{names[i]} ({groups[names[i]]})" for i in pc_order[-3:]), file=out)
    print("group mean PC1 coordinate: " + ", ".join(
        f"{g} {mean([float(pc1_coord[i]) for i, n in enumerate(names) if groups[n] == g]):.2f}" for g in toy_corpus.GROUP_LEVEL), file=out)
    ex = {n: answers[names.index(n) * len(questions)] for n in ("default", "consultant", "mystic", "ghost") if n in names}
    for n, a in ex.items():
        print(f"  e.g. {n}: {a!r}", file=out)
    per_persona = acts_all.view(len(names), len(questions), *acts_all.shape[1:])  # [personas, q, blocks, d]
    axes = per_persona[default_mask].mean((0, 1)) - per_persona[~default_mask].mean((0, 1))  # [blocks, d]
    return {"axis": axis, "axes": axes, "default_acts": per_persona[default_mask].flatten(0, 1),
            "pc1_share": float(share[0]), "pc2_share": float(share[1]), "spearman": rho,
            "concordance": concord, "cos_pc1_axis": abs(cos_pc1),
            "default_proj": mean([float(proj[i]) for i in range(len(names)) if levels[i] == 0]),
            "fantastical_proj": mean([float(proj[i]) for i in range(len(names)) if levels[i] == 3])}


def converse(model, tok, users, capper=None):
    """Conversations generated turn by turn (greedy, 96 new tokens a reply, one batch per turn) from
    each conversation's user turns, with `capper` active throughout if one is given."""
    with capper if capper is not None else contextlib.nullcontext():
        return generate_conversations(model, tok, users, max_new_tokens=96)


def section2(model, tok, layer, axis, n_conv, out):
    rng = random.Random(2026)
    print(f"\n== Section 2: drift along generated conversations (block {layer}; projection a.v/|v| on the axis)", file=out)
    results = {}
    for kind in ("drift", "control"):
        generated = converse(model, tok, toy_corpus.user_turns(rng, n_conv, drifting=(kind == "drift")))
        per_turn, theat_turn = [], []
        for c, messages in enumerate(generated):
            acts = turn_mean_activations(model, tok, messages, layer)
            per_turn.append([float(project(x, axis)) for x in acts])
            theat_turn.append([tj.theatricality(m["content"]) for m in messages if m["role"] == "assistant"])
            if c == 0:
                for m in messages:
                    print(f"  [{kind} example] {m['role']}: {m['content']}", file=out)
        n_turns = len(per_turn[0])
        means = [mean([p[t] for p in per_turn]) for t in range(n_turns)]
        th = [mean([p[t] for p in theat_turn]) for t in range(n_turns)]
        falls = sum(p[-1] < p[0] for p in per_turn)
        rho = mean([spearman(list(range(n_turns)), p) for p in per_turn])
        print(f"{kind:>7}: mean projection by turn " + " ".join(f"{x:7.2f}" for x in means)
              + f"   | theatrical share by turn " + " ".join(f"{x:.2f}" for x in th), file=out)
        print(f"{'':>7}  last turn below first in {falls}/{len(per_turn)} conversations; "
              f"mean Spearman(turn, projection) = {rho:.2f}", file=out)
        results[kind] = {"means": means, "falls": falls, "n": len(per_turn), "rho": rho}
    return results


def section2_capping(model, tok, s1, cap_sets, n_conv, out, quantile=0.25):
    """Pushing conversations replayed turn by turn, uncapped and with the course's floor capper
    (section 2's ActivationCapper, tau = the `quantile` of the default personas' projections at each
    capped block): how theatrical the replies are, and how many speak as an AI assistant."""
    from utils.reference import load

    capper_cls = load("section2").ActivationCapper
    users = toy_corpus.user_turns(random.Random(7), n_conv)
    print(f"\n== Section 2: capping (pushing conversations, {n_conv} x 5 turns, greedy; tau = {quantile:.2f} quantile of the "
          f"default personas' projections at each capped block; toy judge: theatrical share of sentences, AI self-description)", file=out)
    print(f"{'capped blocks':<14} {'theatrical, turns 3-5':>22} {'as an AI, turns 3-5':>20}   theatrical by turn", file=out)
    results = {}
    for blocks in [()] + [tuple(b) for b in cap_sets]:
        capper = None
        if blocks:
            units = [s1["axes"][b] / s1["axes"][b].norm() for b in blocks]
            taus = [float(torch.quantile(s1["default_acts"][:, b] @ u, quantile)) for b, u in zip(blocks, units)]
            capper = capper_cls(model, units, taus, list(blocks))
        replies = [[m["content"] for m in conv if m["role"] == "assistant"] for conv in converse(model, tok, users, capper)]
        th = [mean([tj.theatricality(r[t]) for r in replies]) for t in range(5)]
        late_th = mean([tj.theatricality(x) for r in replies for x in r[2:]])
        late_ai = mean([float(tj.count_markers(x, tj.AI_MARKERS) > 0) for r in replies for x in r[2:]])
        name = "none" if not blocks else ",".join(map(str, blocks))
        print(f"{name:<14} {late_th:>22.2f} {late_ai:>20.2f}   " + " ".join(f"{x:.2f}" for x in th), file=out)
        print(f"{'':<14} e.g. turn 4: {replies[0][3][:100]!r}", file=out)
        results[name] = {"theatrical_late": late_th, "ai_late": late_ai, "theatrical_by_turn": th}
    return results


def section3(model, tok, layers, n_questions, out):
    judge = tj.toy_judge()
    coh_template = data.load_coherence_prompt()
    print(f"\n== Section 3: contrastive prompts (5 pairs x {n_questions} questions x pos/neg per trait; "
          f"temperature 0.7, seed 0, 64 new tokens; {judge.label})", file=out)
    print(f"{'trait':<14} {'pos mean':>8} {'neg mean':>8} {'coh pos':>7} {'coh neg':>7} {'effective':>9}", file=out)
    results, vectors = {}, {}
    for trait in data.TRAITS:
        td = data.load_trait(trait, "extract")
        reqs = [(i, q, pol, toy_corpus.trait_system_prompt(trait, pol, ins))
                for i, ins in enumerate(td["instruction"]) for q in td["questions"][:n_questions] for pol in ("pos", "neg")]
        answers = generate(model, tok, [build_messages(s, q) for _, q, _, s in reqs], max_new_tokens=64,
                           temperature=0.7, seed=0)
        scores = [judge.score_trait(q, a, td["eval_prompt"]).value for (_, q, _, _), a in zip(reqs, answers)]
        coh = [judge.score_coherence(q, a, coh_template).value for (_, q, _, _), a in zip(reqs, answers)]
        pos = [k for k, r in enumerate(reqs) if r[2] == "pos"]
        neg = [k for k, r in enumerate(reqs) if r[2] == "neg"]
        eff = []
        for kp, kn in zip(pos, neg):
            sp, sn, cp, cn = scores[kp], scores[kn], coh[kp], coh[kn]
            if None not in (sp, sn, cp, cn) and sp >= 50 and sn < 50 and cp >= 50 and cn >= 50:
                eff.append((kp, kn))
        share = len(eff) / len(pos)
        print(f"{trait:<14} {mean([scores[k] for k in pos]):>8.1f} {mean([scores[k] for k in neg]):>8.1f} "
              f"{mean([coh[k] for k in pos]):>7.1f} {mean([coh[k] for k in neg]):>7.1f} {100 * share:>8.0f}%", file=out)
        results[trait] = {"pos": mean([scores[k] for k in pos]), "neg": mean([scores[k] for k in neg]), "effective": share}
        use = eff if eff else list(zip(pos, neg))
        convs = [build_messages(reqs[k][3], reqs[k][1], nonempty(answers[k])) for pair in use for k in pair]
        acts = response_mean_activations(model, tok, convs, layers=list(layers))  # [n, len(layers), d]
        vectors[trait] = {layer: acts[0::2, j].mean(0) - acts[1::2, j].mean(0) for j, layer in enumerate(layers)}
    print(f"  e.g. evil pos: {answers_example(model, tok, 'evil', 'pos')!r}", file=out)
    print(f"  e.g. evil neg: {answers_example(model, tok, 'evil', 'neg')!r}", file=out)
    return results, vectors


def answers_example(model, tok, trait, polarity):
    td = data.load_trait(trait, "extract")
    (a,) = generate(model, tok, [build_messages(toy_corpus.trait_system_prompt(trait, polarity, td["instruction"][0]),
                                                td["questions"][0])], max_new_tokens=64)
    return a


def section4(model, tok, layer, vectors, n_questions, out, positions="response"):
    vectors = {t: v[layer] for t, v in vectors.items()}
    judge = tj.toy_judge()
    coh_template = data.load_coherence_prompt()
    print(f"\n== Section 4: steering block {layer} (positions={positions!r}), greedy, 64 new tokens, "
          f"{n_questions} eval questions per trait; trait score / coherence by coefficient", file=out)
    print(f"{'trait':<14} {'|v|':>6} " + " ".join(f"{c:>+11d}" for c in COEFFS) + "  rho  monotone", file=out)
    results = {}
    for trait in data.TRAITS:
        ev = data.load_trait(trait, "eval")
        qs = ev["questions"][:n_questions]
        row, coh_row = [], []
        for c in COEFFS:
            with Steerer(model, vectors[trait], coeff=float(c), layer=layer, positions=positions):
                answers = generate(model, tok, [build_messages(None, q) for q in qs], max_new_tokens=64)
            row.append(mean([judge.score_trait(q, a, ev["eval_prompt"]).value for q, a in zip(qs, answers)]))
            coh_row.append(mean([judge.score_coherence(q, a, coh_template).value for q, a in zip(qs, answers)]))
            if trait == "evil" and c in (-3, 0, 1, 2, 3):
                results.setdefault("_examples", []).append((c, answers[0]))
        rho = spearman(list(COEFFS), row)
        monotone = all(b >= a - 1e-9 for a, b in zip(row, row[1:]))
        print(f"{trait:<14} {float(vectors[trait].norm()):>6.2f} "
              + " ".join(f"{s:>5.1f}/{h:>5.1f}" for s, h in zip(row, coh_row)) + f" {rho:>5.2f}  {'yes' if monotone else 'no'}", file=out)
        results[trait] = {"scores": row, "coherence": coh_row, "rho": rho, "monotone": monotone}
    traits = [t for t in data.TRAITS]
    avg = [mean([results[t]["scores"][i] for t in traits]) for i in range(len(COEFFS))]
    avg_coh = [mean([results[t]["coherence"][i] for t in traits]) for i in range(len(COEFFS))]
    print(f"{'mean':<14} {'':>6} " + " ".join(f"{s:>5.1f}/{h:>5.1f}" for s, h in zip(avg, avg_coh))
          + f" {spearman(list(COEFFS), avg):>5.2f}  {'yes' if all(b >= a - 1e-9 for a, b in zip(avg, avg[1:])) else 'no'}", file=out)
    results["mean"] = {"scores": avg, "coherence": avg_coh}
    for c, a in results.pop("_examples", []):
        print(f"  e.g. evil, coeff {c:+d}: {a!r}", file=out)
    return results


def headline(figures: dict) -> list[tuple[str, float, float]]:
    """(name, value, tolerance) of the figures a rerun should reproduce."""
    rows = []
    if "section1" in figures:
        f = figures["section1"]
        rows += [("S1 PC1 share", f["pc1_share"], 0.05), ("S1 Spearman(axis, corpus order)", f["spearman"], 0.10),
                 ("S1 pairs ordered as in corpus", f["concordance"], 0.05), ("S1 |cos(PC1, axis)|", f["cos_pc1_axis"], 0.15)]
    if "section2" in figures and "section1" in figures:
        # in units of the axis's default-to-fantastical gap (section 1), so that the figure does not
        # depend on the model's activation scale
        gap = figures["section1"]["default_proj"] - figures["section1"]["fantastical_proj"]
        for kind in ("drift", "control"):
            m = figures["section2"][kind]["means"]
            rows.append((f"S2 {kind}: (last - first turn) / S1 gap", (m[-1] - m[0]) / gap, 0.2))
    for name, v in figures.get("section2_capping", {}).items():
        rows.append((f"S2 capped {name}: theatrical turns 3-5", v["theatrical_late"], 0.15))
    if "section3" in figures:
        f = figures["section3"]
        rows += [("S3 mean pos score", mean([v["pos"] for v in f.values()]), 5.0),
                 ("S3 mean neg score", mean([v["neg"] for v in f.values()]), 5.0),
                 ("S3 mean effective share", mean([v["effective"] for v in f.values()]), 0.05)]
    for key in [k for k in figures if k.startswith("section4")]:
        for c, v in zip(COEFFS, figures[key]["mean"]["scores"]):
            rows.append((f"{key.replace('section4', 'S4')} mean score at {c:+d}", v, 10.0))
    return rows


def compare(figures: dict, other: dict, label: str, out) -> bool:
    mine, theirs = headline(figures), dict((n, v) for n, v, _ in headline(other))
    print(f"{'figure':<42} {'this run':>9} {label:>12} {'|diff|':>7} {'tolerance':>9}", file=out)
    ok = True
    for name, v, tol in mine:
        if name not in theirs:
            continue
        d = abs(v - theirs[name])
        ok &= d <= tol
        print(f"{name:<42} {v:>9.3f} {theirs[name]:>12.3f} {d:>7.3f} {tol:>9.2f}{'' if d <= tol else '  OUTSIDE'}", file=out)
    print(f"all within tolerance: {'yes' if ok else 'no'}", file=out)
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--quick", action="store_true", help="fewer questions (development)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repro", action="store_true", help="rerun the first training steps and compare weights")
    ap.add_argument("--compare", type=Path, action="append", default=[],
                    help="figures JSON (--json) of another training run to compare with; repeatable")
    ap.add_argument("--sections", default="1234")
    ap.add_argument("--conversations", type=int, default=27,
                    help="pushing (and control) conversations in section 2, generated as one batch per turn")
    ap.add_argument("--about", default=None, help="a line saying which training run this is, stored in the --json figures")
    ap.add_argument("--cap-sets", default="4;3,4,5",
                    help="capped block sets to try beside the course's capping layers, e.g. '2,3,4;1,2,3,4'")
    ap.add_argument("--cap-quantile", type=float, default=0.25,
                    help="tau = this quantile of the default personas' projections (the paper's 25th percentile)")
    ap.add_argument("--extra-steer-layer", type=int, default=0,
                    help="also steer at this block (default 0; -1 for none), beside the course's steering block")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.extra_steer_layer is not None and args.extra_steer_layer < 0:
        args.extra_steer_layer = None
    t0 = time.time()
    out = io.StringIO()

    class Tee:
        def write(self, s):
            out.write(s)
            sys.stdout.write(s)
            sys.stdout.flush()

        def flush(self):
            sys.stdout.flush()

    tee = Tee()
    model, tok = load_model(str(args.model))
    if (args.model / "toy_world.json").is_file():
        tj.use_world_file(args.model / "toy_world.json")
    # the toy world's layers (utils.models.TOY_LAYERS), whatever folder the model was loaded from
    toy = layer_settings("toy-qwen2")
    layers = toy if max(toy.cap_layers) < num_blocks(model) else layer_settings(model)
    log = json.loads((args.model / "training_log.json").read_text()) if (args.model / "training_log.json").is_file() else {}
    print(f"Toy persona world check: model {args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model} "
          f"({sum(p.numel() for p in model.parameters())} parameters, {model.config.num_hidden_layers} blocks, "
          f"d_model {model.config.hidden_size}); trained in {log.get('seconds', '?')} s, "
          f"{log.get('steps_total', '?')} steps, final loss (ema) {log['steps'][-1]['ema'] if log.get('steps') else '?'}; "
          f"torch {torch.__version__}, {args.threads} threads", file=tee)
    print(f"judge: {tj.TOY_JUDGE_LABEL}", file=tee)
    figures = {}
    nq_p, nq_t, n_conv = (6, 6, 3) if args.quick else (18, 20, args.conversations)
    if "1" in args.sections or "2" in args.sections:
        figures["section1"] = section1(model, tok, layers.axis_layer, nq_p, tee)
        print(f"[{time.time() - t0:.0f}s]", file=sys.stderr)
    if "2" in args.sections:
        figures["section2"] = section2(model, tok, layers.axis_layer, figures["section1"]["axis"], n_conv, tee)
        extra = [[int(b) for b in c.split(",")] for c in args.cap_sets.split(";") if c]
        cap_sets = [layers.cap_layers] + [c for c in extra if tuple(c) != tuple(layers.cap_layers)]
        figures["section2_capping"] = section2_capping(model, tok, figures["section1"], cap_sets, n_conv, tee,
                                                       quantile=args.cap_quantile)
        print(f"[{time.time() - t0:.0f}s]", file=sys.stderr)
    if "3" in args.sections or "4" in args.sections:
        steer_layers = sorted({layers.steer_layer, args.extra_steer_layer} - {None})
        figures["section3"], vectors = section3(model, tok, steer_layers, nq_t, tee)
        print(f"[{time.time() - t0:.0f}s]", file=sys.stderr)
        if "4" in args.sections:
            figures["section4"] = section4(model, tok, layers.steer_layer, vectors, nq_t, tee)
            if args.extra_steer_layer is not None and args.extra_steer_layer != layers.steer_layer:
                print(f"\n(the same at block {args.extra_steer_layer}, an earlier block)", file=tee)
                figures[f"section4_block{args.extra_steer_layer}"] = section4(model, tok, args.extra_steer_layer, vectors, nq_t, tee)
    if args.repro:
        import train as toy_train

        print("\n== Reproducibility", file=tee)
        buf = io.StringIO()
        with redirect_stdout(buf):
            ok = toy_train.verify_prefix(toy_train.parse_args(["--verify-prefix", str(args.model)]))
        print(buf.getvalue().strip().splitlines()[-1], file=tee)
        figures["repro_prefix_identical"] = ok
    if "section1" in figures:
        for key in ("axis", "axes", "default_acts"):
            figures["section1"].pop(key)
    for path in args.compare:
        other = json.loads(path.read_text())
        print(f"\n== Reproducibility: this run against {other.get('about', path.name)}", file=tee)
        figures[f"matches_{path.stem}"] = compare(figures, other, "other run", tee)
    print(f"\n(check ran in {time.time() - t0:.0f} s)", file=tee)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(out.getvalue())
    if args.json:
        if args.about:
            figures["about"] = args.about
        args.json.write_text(json.dumps(figures, indent=1, default=float))
    return figures


if __name__ == "__main__":
    main()
