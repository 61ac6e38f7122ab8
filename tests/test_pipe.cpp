// Filled in by its issue's branch.
