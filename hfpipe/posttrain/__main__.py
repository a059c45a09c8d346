"""A rank of a TRL stage started by `accelerate launch` (see launch.py): ``python -m hfpipe.posttrain --worker
<worker.json>``."""

import argparse
import sys

from hfpipe.posttrain.launch import worker_main

parser = argparse.ArgumentParser(prog="python -m hfpipe.posttrain")
parser.add_argument("--worker", required=True, help="worker.json written by the stage")
sys.exit(worker_main(parser.parse_args().worker))
