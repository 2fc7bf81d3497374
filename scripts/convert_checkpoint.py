#!/usr/bin/env python
"""Convert published Mega weights into a fairseq checkpoint folder of this plugin, or a
converted model into the Hugging Face port's format.

    # a checkpoint of the original research code (facebookresearch/mega); its dictionaries
    # are read from --data (default: the checkpoint's folder): dict.txt (language model),
    # dict.<src>.txt + dict.<tgt>.txt (translation), src-bin/ + label-bin/ (LRA)
    python scripts/convert_checkpoint.py --source-format original checkpoint_best.pt OUT

    # a save_pretrained folder of the Hugging Face port (config.json + weights)
    python scripts/convert_checkpoint.py --source-format hf mega-base-wikitext/ OUT

    # back to the port: a checkpoint of this plugin -> a save_pretrained folder
    python scripts/convert_checkpoint.py --to hf OUT/model.pt HF_OUT

OUT receives ``model.pt`` (loadable with torch's safe loader) and the dictionary files of
its task, for ``fairseq-eval-lm``/``fairseq-generate``/``fairseq-interactive``/
``fairseq-validate --user-dir mega_fairseq --path OUT/model.pt`` (binarize new data with
``fairseq-preprocess --srcdict OUT/dict.txt``) and the hub interfaces
(``from_pretrained(OUT, checkpoint_file="model.pt")``). OUT must be new or empty; it
appears only when the conversion succeeded. Where the converted model deliberately
computes something differently from its source (a defect of the source), a note says so.
"""

import argparse
import logging
import os
import sys

logger = logging.getLogger("convert_checkpoint")

SOURCE_FORMATS = ("original", "hf")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="checkpoint file (original; --to hf) or save_pretrained folder (hf)")
    parser.add_argument("output_dir", help="new or empty folder to write")
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--source-format", choices=SOURCE_FORMATS,
                           help="convert from this format to a fairseq checkpoint of this plugin")
    direction.add_argument("--to", choices=("hf",), help="convert a checkpoint of this plugin to this format")
    parser.add_argument("--data", default=None,
                        help="original: the folder of the original's dictionaries (default: INPUT's "
                             "folder); --to hf: the data folder of the checkpoint's task (default: "
                             "INPUT's folder)")
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> str:
    """Run the conversion ``args`` asks for; returns what was written."""
    import mega_fairseq  # noqa: F401  (registers the models and tasks)

    data = args.data or os.path.dirname(os.path.abspath(args.input))
    if args.to == "hf":
        from mega_fairseq.conversion.hf_models import export_checkpoint_to_hf

        return export_checkpoint_to_hf(args.input, args.output_dir, data_dir=data)
    if args.source_format == "original":
        from mega_fairseq.conversion.original_mega import convert_original_checkpoint

        converted = convert_original_checkpoint(args.input, data)
    else:
        from mega_fairseq.conversion.hf_models import convert_hf_folder

        converted = convert_hf_folder(args.input)
    from mega_fairseq.conversion.checkpoint_writer import write_checkpoint_folder

    for note in converted.notes:
        logger.warning("note: %s", note)
    path = write_checkpoint_folder(converted, args.output_dir)
    parameters = sum(p.numel() for p in converted.model.parameters())
    logger.info("wrote %s (%s, %s: %d parameters) and its dictionaries", path, converted.kind,
                type(converted.model).__name__, parameters)
    return path


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s | %(levelname)s | %(message)s")
    args = parse_args(argv)
    try:
        convert(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"convert_checkpoint.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
