"""Built-in Check plugins, one module each: ``caption_mismatch``, ``label_conflict``,
``duplicates``, ``outliers``; ``common`` holds what they share.

Each check reads only the columns it needs (projection), works per dataset (captions,
labels and duplicates are judged within the dataset a sample belongs to), is vectorised
with numpy, and returns one row per scored sample in :data:`lake.plugin.RESULT_SCHEMA`
plus a JSON-ready summary (counts, thresholds, the embedding models it read). Checks
never write or delete anything themselves: ``lake.check`` writes flags and scores.
Configs and entry points name the modules (``plugins.checks.duplicates.Duplicates``).
"""
