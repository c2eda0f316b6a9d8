"""Instructions per scalar op, counted by callgrind: repeatable whatever else the machine does,
where wall-clock times of a 1-2 µs op move by 20% with the load.

    python -m benchmarks.instructions          # needs valgrind; about a minute

Runs a chain of 2,000 `tanh(x * b + a)` steps on 0-d tensors (6,000 ops, forward + backward) once
and six times under `valgrind --tool=callgrind`, with one BLAS and one pyautodiff thread, and
prints (instructions of six chains - instructions of one) / (5 * 6,000): the cost of one op with
the interpreter's start-up and imports cancelled out. Standard library only.
"""

import os
import re
import subprocess
import sys
import tempfile

CHAIN = """
import sys
import pyautodiff as ad
a = ad.tensor(0.5, requires_grad=True)
b = ad.tensor(0.3, requires_grad=True)
def chain():
    x = a
    for _ in range(2000):
        x = ad.tanh(x * b + a)
    x.backward()
for _ in range(int(sys.argv[1])):
    chain()
"""
OPS_PER_CHAIN = 6000


def count(script, chains):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYAUTODIFF_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, script,
                        str(chains)], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as fh:
            return int(re.search(r"^totals: (\d+)", fh.read(), re.M).group(1))


def main():
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(CHAIN)
    try:
        one, six = count(fh.name, 1), count(fh.name, 6)
    finally:
        os.unlink(fh.name)
    print(f"{(six - one) / (5 * OPS_PER_CHAIN):,.0f} instructions per scalar op (forward + backward, "
          "Python included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
