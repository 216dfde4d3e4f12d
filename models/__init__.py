"""Models that ship with diffsolve (trained in the project; weights under weights/)."""
