"""The contract in code: ids, events, subjects, the event log, command serving, embedded servers."""
