#!/usr/bin/env python
"""Score translations the two ways the Mega paper reports WMT'16 En-De results.

(a) Tokenized BLEU with compound splitting, as fairseq's ``scripts/compound_split_bleu.sh``
    computes it: BPE is removed (``@@ ``), every hyphen between two non-space characters
    becomes `` ##AT##-##AT## `` in hypotheses and references alike (the perl substitution
    ``s{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g``), and BLEU-4 is computed on whitespace tokens
    with no smoothing -- what ``fairseq-score`` and ``multi-bleu.perl`` compute, here with
    sacrebleu (``tokenize='none'``, ``smooth_method='none'``).
(b) Detokenized sacreBLEU, as fairseq's ``scripts/sacrebleu.sh``: hypotheses without BPE
    are detokenized with sacremoses and scored with sacrebleu's default 13a tokenisation
    against raw references (``--sacrebleu-ref``, e.g. the output of
    ``sacrebleu -t wmt14/full -l en-de --echo ref``).  Without ``--sacrebleu-ref`` the
    tokenized references are detokenized instead: an approximation, flagged in the output.

Input: the output of ``fairseq-generate`` (``H-<id>\\t<score>\\t<hypothesis>`` and
``T-<id>\\t<reference>`` lines; the first ``H`` of each id is used), or plain line-aligned
``--hyp-file`` / ``--ref-file``.

Usage:
  python scripts/score_translation.py gen.out --sacrebleu-ref newstest2014.raw.de --json scores.json
  python scripts/score_translation.py --hyp-file hyp.tok.de --ref-file ref.tok.de
"""

import argparse
import json
import re
import sys
from typing import Dict, List, Optional, Tuple

from sacrebleu.metrics import BLEU

from atomic_output import AtomicOutputs
from text_input import TextDecodeError, read_text

COMPOUND_HYPHEN = re.compile(r"(\S)-(\S)")
BPE_SYMBOL = "@@ "
GENERATE_SUMMARY = re.compile(r"^Generate \S+ with beam=\d+: (.*)$")


class ScoringError(Exception):
    """A problem with the inputs, reported as one clear line."""


def remove_bpe(line: str, symbol: str = BPE_SYMBOL) -> str:
    """Undo subword-nmt BPE as fairseq's ``--remove-bpe`` does (idempotent)."""
    return (line + " ").replace(symbol, "").rstrip()


def split_compounds(line: str) -> str:
    """Separate hyphenated compounds like compound_split_bleu.sh (non-overlapping matches,
    so ``a-b-c`` becomes ``a ##AT##-##AT## b-c``, exactly as the perl one-liner)."""
    return COMPOUND_HYPHEN.sub(r"\1 ##AT##-##AT## \2", line)


def read_lines(path: str) -> List[str]:
    """Lines of a UTF-8 text file without their line ends."""
    try:
        return read_text(path).splitlines()
    except FileNotFoundError:
        raise ScoringError(f"file not found: {path}") from None
    except TextDecodeError as error:
        raise ScoringError(str(error)) from None


def _parse_id(tag: str, line_number: int, path: str) -> int:
    """The integer sample id of an ``H-<id>`` / ``T-<id>`` tag."""
    try:
        return int(tag[2:])
    except ValueError:
        raise ScoringError(f"{path}:{line_number}: cannot read the sample id of {tag!r}") from None


def parse_generate_output(path: str) -> Tuple[List[str], List[str], List[int], Optional[str]]:
    """Hypotheses and references of a fairseq-generate output, sorted by sample id.

    Returns (hypotheses, references, ids, fairseq's own BLEU summary or None).
    """
    hyps: Dict[int, str] = {}
    refs: Dict[int, str] = {}
    summary = None
    for number, line in enumerate(read_lines(path), start=1):
        if line.startswith("H-"):
            fields = line.split("\t")
            if len(fields) < 2:
                raise ScoringError(f"{path}:{number}: malformed H- line (expected H-<id>, score, text)")
            sample_id = _parse_id(fields[0], number, path)
            hyps.setdefault(sample_id, fields[2] if len(fields) > 2 else "")
        elif line.startswith("T-"):
            fields = line.split("\t", 1)
            sample_id = _parse_id(fields[0], number, path)
            if sample_id in refs:
                raise ScoringError(f"{path}:{number}: second reference for sample {sample_id}")
            refs[sample_id] = fields[1] if len(fields) > 1 else ""
        else:
            match = GENERATE_SUMMARY.match(line)
            if match:
                summary = match.group(1)
    if not hyps:
        raise ScoringError(f"{path} has no H-<id> lines: is it the output of fairseq-generate?")
    if not refs:
        raise ScoringError(f"{path} has no T-<id> lines (references); score with --hyp-file/--ref-file instead")
    if hyps.keys() != refs.keys():
        no_ref = sorted(hyps.keys() - refs.keys())
        no_hyp = sorted(refs.keys() - hyps.keys())
        raise ScoringError(
            f"{path}: {len(hyps)} hypotheses but {len(refs)} references; "
            f"ids without reference: {no_ref[:10]}, ids without hypothesis: {no_hyp[:10]}"
        )
    ids = sorted(hyps)
    return [hyps[i] for i in ids], [refs[i] for i in ids], ids, summary


def check_aligned(hyps: List[str], refs: List[str], hyp_name: str, ref_name: str) -> None:
    """Stop on empty or differently sized inputs."""
    if not hyps:
        raise ScoringError(f"{hyp_name} is empty")
    if not refs:
        raise ScoringError(f"{ref_name} is empty")
    if len(hyps) != len(refs):
        raise ScoringError(f"{hyp_name} has {len(hyps)} lines but {ref_name} has {len(refs)}")


def bleu_result(score) -> dict:
    """A sacrebleu BLEUScore as a JSON-friendly dict."""
    return {
        "score": round(score.score, 4),
        "precisions": [round(p, 4) for p in score.precisions],
        "bp": round(score.bp, 6),
        "sys_len": score.sys_len,
        "ref_len": score.ref_len,
        "formatted": str(score),
    }


def tokenized_bleu(hyps: List[str], refs: List[str]) -> dict:
    """BLEU on Moses-tokenised text after BPE removal and compound splitting
    (= fairseq-score / multi-bleu.perl on compound_split_bleu.sh's files)."""
    sys_lines = [split_compounds(remove_bpe(h)) for h in hyps]
    ref_lines = [split_compounds(remove_bpe(r)) for r in refs]
    metric = BLEU(tokenize="none", smooth_method="none", force=True)
    result = bleu_result(metric.corpus_score(sys_lines, [ref_lines]))
    result["signature"] = str(metric.get_signature())
    return result


def moses_detokenizer(lang: str):
    """A function detokenizing one line with sacremoses, or None if it is not installed."""
    try:
        from sacremoses import MosesDetokenizer
    except ImportError:
        return None
    detok = MosesDetokenizer(lang=lang)
    return lambda line: detok.detokenize(line.split())


def detokenized_sacrebleu(hyps: List[str], refs: List[str], detok: str, lang: str,
                          refs_are_raw: bool) -> Tuple[Optional[dict], Optional[str]]:
    """sacreBLEU (13a) of detokenized hypotheses; returns (result or None, note or None)."""
    if detok == "none":
        detokenize = remove_bpe
    else:
        moses = moses_detokenizer(lang)
        if moses is None:
            return None, ("detokenized sacreBLEU skipped: sacremoses is not installed "
                          "(pip install sacremoses), or pass already detokenized hypotheses "
                          "with --detok none")
        detokenize = lambda line: moses(remove_bpe(line))  # noqa: E731
    sys_lines = [detokenize(h) for h in hyps]
    note = None
    if refs_are_raw:
        ref_lines = list(refs)
    else:
        ref_lines = [detokenize(r) for r in refs]
        note = ("references are the detokenized tokenized references, not the raw test set: "
                "not comparable to published sacreBLEU (pass --sacrebleu-ref)")
    metric = BLEU()
    result = bleu_result(metric.corpus_score(sys_lines, [ref_lines]))
    result["signature"] = str(metric.get_signature())
    result["detokenizer"] = "none" if detok == "none" else f"sacremoses ({lang})"
    result["raw_references"] = refs_are_raw
    return result, note


def load_inputs(args: argparse.Namespace) -> Tuple[List[str], List[str], dict]:
    """Hypotheses, references and a description of where they came from."""
    if args.generate_output:
        hyps, refs, ids, summary = parse_generate_output(args.generate_output)
        info = {"input": args.generate_output, "first_id": ids[0], "last_id": ids[-1]}
        if summary is None:
            print(f"warning: {args.generate_output} does not end with fairseq-generate's BLEU line; "
                  "was generation complete?", file=sys.stderr)
        else:
            info["fairseq_generate_bleu"] = summary
        return hyps, refs, info
    hyps, refs = read_lines(args.hyp_file), read_lines(args.ref_file)
    check_aligned(hyps, refs, args.hyp_file, args.ref_file)
    return hyps, refs, {"input": args.hyp_file, "references": args.ref_file}


def score(args: argparse.Namespace) -> dict:
    """Both scores as one JSON-friendly dict."""
    hyps, refs, info = load_inputs(args)
    result = dict(info, sentences=len(hyps))
    result["tokenized_bleu"] = tokenized_bleu(hyps, refs)
    sacre_refs, raw = refs, False
    if args.sacrebleu_ref:
        sacre_refs, raw = read_lines(args.sacrebleu_ref), True
        check_aligned(hyps, sacre_refs, "the hypotheses", args.sacrebleu_ref)
    sacre, note = detokenized_sacrebleu(hyps, sacre_refs, args.detok, args.detok_lang, raw)
    result["sacrebleu"] = sacre
    if note:
        result["sacrebleu_note"] = note
    return result


def report(result: dict) -> str:
    """Human-readable summary."""
    tok = result["tokenized_bleu"]
    lines = [
        f"sentences: {result['sentences']}",
        f"tokenized BLEU (BPE removed, compound split; = fairseq-score/multi-bleu): {tok['score']:.2f}",
        f"  {tok['formatted']}",
    ]
    sacre = result["sacrebleu"]
    if sacre is not None:
        lines += [f"detokenized sacreBLEU: {sacre['score']:.2f}", f"  {sacre['formatted']}",
                  f"  signature: {sacre['signature']}; detokenizer: {sacre['detokenizer']}"]
    if result.get("sacrebleu_note"):
        lines.append(f"note: {result['sacrebleu_note']}")
    if result.get("fairseq_generate_bleu"):
        lines.append(f"(fairseq-generate's own BLEU, no compound splitting: {result['fairseq_generate_bleu']})")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generate_output", nargs="?", help="output file of fairseq-generate")
    parser.add_argument("--hyp-file", help="plain hypotheses, one per line (instead of GENERATE_OUTPUT)")
    parser.add_argument("--ref-file", help="plain tokenized references, one per line (with --hyp-file)")
    parser.add_argument("--sacrebleu-ref", help="raw (untokenized) references for sacreBLEU, in id order")
    parser.add_argument("--detok", choices=["moses", "none"], default="moses",
                        help="how to detokenize hypotheses for sacreBLEU: sacremoses (default) or "
                             "'none' (they are already detokenized)")
    parser.add_argument("--detok-lang", default="en",
                        help="sacremoses language (default 'en': what fairseq's scripts/sacrebleu.sh "
                             "uses, `sacremoses detokenize` with its default language)")
    parser.add_argument("--json", help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    if args.generate_output and (args.hyp_file or args.ref_file):
        parser.error("give either a fairseq-generate output or --hyp-file/--ref-file, not both")
    if not args.generate_output and not (args.hyp_file and args.ref_file):
        parser.error("give a fairseq-generate output file, or both --hyp-file and --ref-file")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: exit status 1 with one clear message on bad input."""
    args = parse_args(argv)
    try:
        result = score(args)
    except ScoringError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report(result))
    if args.json:
        with AtomicOutputs() as outputs, open(outputs.path(args.json), "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
