"""The model side of the pipeline: the bundle's scorer row by row within the budget, the team's endpoint (its client, breaker and forwarding), one call for both."""
