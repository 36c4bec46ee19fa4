"""The device agent (`fleet agent`) and the fleet simulator (`fleet simulate`) (DESIGN §5)."""
