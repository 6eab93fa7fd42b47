"""Magnetic-tile's development part: the images training trains on, as links.

Training holds out every 4th image of each class (sorted by name); the development part is the
other three quarters, which the evaluation scripts split again the way training splits a
dataset, so that settings are chosen without ever looking at the real held-out quarter. Images
are linked with their masks, never copied.

Usage: python3 scripts/magnetic-tile-dev.py DATASET_DIR DEV_DIR
"""
import os
import shutil
import sys

if len(sys.argv) != 3:
    sys.exit("usage: python3 scripts/magnetic-tile-dev.py DATASET_DIR DEV_DIR")
source, dev = os.path.realpath(sys.argv[1]), sys.argv[2]
if not os.path.isdir(source):
    sys.exit(f"magnetic-tile-dev: {source} is not a folder")
shutil.rmtree(dev, ignore_errors=True)
for folder in sorted(os.listdir(source)):
    if not folder.startswith("MT_"):
        continue
    images = sorted(f for f in os.listdir(f"{source}/{folder}/Imgs") if f.endswith(".jpg"))
    os.makedirs(f"{dev}/{folder}/Imgs")
    for i, name in enumerate(images):
        if i % 4 == 3:
            continue  # the real held-out quarter: never looked at here
        for file in (name, name[:-4] + ".png"):
            if os.path.exists(f"{source}/{folder}/Imgs/{file}"):
                os.symlink(f"{source}/{folder}/Imgs/{file}", f"{dev}/{folder}/Imgs/{file}")
