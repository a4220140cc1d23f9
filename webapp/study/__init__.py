"""The trial's domain: definition, intake, questionnaires, allocation and the study log.

No Flask here: the pages live in the participant and portal blueprints, and the
``stillroom study`` commands call the same functions.
"""
