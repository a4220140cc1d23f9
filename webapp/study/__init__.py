"""The trial's domain: the study definition, questionnaires, and what builds on them.

No Flask here: the pages live in the participant and portal blueprints.
"""
