"""Print a config's parameter groups and every group's lr by epoch, without training.

    .venv/bin/python scripts/plan.py --config configs/lenet.yaml [--epochs N] [--png PATH]
        [any LightningCLI override, e.g. --model.scheduler.init_args.milestones [1,2]]

See ``groupwise.plan``.
"""

from groupwise.plan import main

if __name__ == "__main__":
    main()
