"""A rank started by `accelerate launch` (see launch.py): ``python -m hfpipe.stages.pretrain --worker <worker.json>``."""

import argparse
import sys

from hfpipe.stages.pretrain.launch import worker_main

parser = argparse.ArgumentParser(prog="python -m hfpipe.stages.pretrain")
parser.add_argument("--worker", required=True, help="worker.json written by the stage")
sys.exit(worker_main(parser.parse_args().worker))
