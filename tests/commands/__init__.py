"""The commands as a user types them: every README command, predict, evaluate, gpu-check, install."""
