"""DeepPCB's development part: the boards training trains on, as links.

Training holds out every 4th template and every 4th tested board (each class in the order the
loader lists them: group, board folder, file name), which puts each held-out board beside its
own template. The development part is the other three quarters of the pairs, with their
annotations, which a training run splits again the same way: settings are chosen on it without
ever looking at the real held-out quarter. Files are linked, never copied.

Usage: python3 scripts/deeppcb-dev.py DATASET_DIR DEV_DIR
"""
import os
import shutil
import sys

if len(sys.argv) != 3:
    sys.exit("usage: python3 scripts/deeppcb-dev.py DATASET_DIR DEV_DIR")
source, dev = os.path.realpath(sys.argv[1]), sys.argv[2]
data = os.path.join(source, "PCBData")
if not os.path.isdir(data):
    data = source
if not os.path.isdir(data):
    sys.exit(f"deeppcb-dev: {source} is not a folder")
dev_real = os.path.realpath(dev)
if dev_real == source or source.startswith(dev_real + os.sep) or dev_real.startswith(source + os.sep):
    sys.exit(f"deeppcb-dev: {dev} must lie outside the dataset, and the dataset outside it")
if os.path.isdir(dev) and set(os.listdir(dev)) - {"PCBData"}:
    sys.exit(f"deeppcb-dev: {dev} holds more than an earlier development part; give an empty or new folder")
shutil.rmtree(dev, ignore_errors=True)
index = {"temp": 0, "test": 0}
linked = 0
for group in sorted(os.listdir(data)):
    group_dir = os.path.join(data, group)
    if not os.path.isdir(group_dir):
        continue
    for boards in sorted(os.listdir(group_dir)):
        boards_dir = os.path.join(group_dir, boards)
        if not os.path.isdir(boards_dir) or boards.endswith("_not"):
            continue
        for name in sorted(os.listdir(boards_dir)):
            stem, _ = os.path.splitext(name)
            board, _, kind = stem.rpartition("_")
            if kind not in index:
                continue
            # HOLDOUT_EVERY (4) in src/models/anomaly/train.rs, through dataset::split_every.
            held_out = index[kind] % 4 == 3
            index[kind] += 1
            if held_out:
                continue  # the real held-out quarter: never looked at here
            os.makedirs(os.path.join(dev, "PCBData", group, boards), exist_ok=True)
            os.symlink(os.path.join(boards_dir, name), os.path.join(dev, "PCBData", group, boards, name))
            linked += 1
            if kind == "test":
                notes = os.path.join(group_dir, boards + "_not")
                os.makedirs(os.path.join(dev, "PCBData", group, boards + "_not"), exist_ok=True)
                os.symlink(os.path.join(notes, board + ".txt"),
                           os.path.join(dev, "PCBData", group, boards + "_not", board + ".txt"))
print(f"{linked} images linked under {dev}")
