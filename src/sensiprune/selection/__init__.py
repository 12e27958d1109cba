"""What to remove: rankings, group choice, schedules and budgets."""
