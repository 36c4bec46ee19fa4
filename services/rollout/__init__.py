"""The rollout service: canary and waves behind gates, pause/resume/abort/promote, rollback."""
