"""`python -m volstack.agent --state-dir DIR ...`: the agent without the volstack command line."""
import argparse
import sys

from volstack.agent.main import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m volstack.agent", description="Run the volstack host agent.")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
