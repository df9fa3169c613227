"""Reads a TensorBoard log folder with TensorBoard's own EventAccumulator and prints
{tag: [[step, value], ...]} for every scalar tag."""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1])
acc.Reload()
json.dump({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, sys.stdout)
