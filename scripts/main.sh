#!/usr/bin/env bash
# The main job: decode prompts with the bundled trained model, vanilla and Spiffy side by side.
source "$(dirname "$0")/env.sh"
python -m spiffy_triton.demo "$@"
