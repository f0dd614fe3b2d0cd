import os

# Quiet TensorFlow's C++ start-up chatter (no GPU here) before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
