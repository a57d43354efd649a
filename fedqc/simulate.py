"""``python -m fedqc.simulate --config C --out DIR``: the ``fedqc simulate`` command under its documented name."""

from fedqc.cli import simulate_main

if __name__ == "__main__":
    simulate_main()
