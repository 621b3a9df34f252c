"""Did the model refuse? The substring judge and the one refusal-rate function
(``substring``), model-based judges (``model_judges``) and Arditi et al.'s refusal score
read from the first-token distribution (``scores``)."""
