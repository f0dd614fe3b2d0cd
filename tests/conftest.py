import os

from nonlocal_keras import cpu

# Quiet TensorFlow's C++ start-up chatter (no GPU here) before anything imports it,
# and give it the kernels the console scripts give it (oneDNN on every x86-64 CPU).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
cpu.use_onednn()
