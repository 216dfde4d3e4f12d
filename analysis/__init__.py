"""The ODE read both ways for what it says about a model: likelihood and straightness."""
