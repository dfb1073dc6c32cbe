"""Input reading and validation for ftscale prep."""
