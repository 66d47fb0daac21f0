"""OWL layer allocation for hipp-torchprune (installed separately; found through entry points)."""
