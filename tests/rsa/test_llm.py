"""The LLM adapter (rsa/llm.py) with a fake client: the prompts, the plumbing, no network."""

import re

import jax
import pytest

from amortized_ppl.rsa import (
    AGGREGATION_TEMPLATE,
    LLMAggregator,
    format_candidates,
    last_boxed_answer,
)

PROBLEM = "How many primes are below 10?"


class FakeClient:
    """Records every prompt and answers with a numbered text whose boxed answer alternates."""

    def __init__(self):
        self.prompts = []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        n = len(self.prompts)
        return f"attempt {n}: {{some}} reasoning \\boxed{{{4 if n % 3 else 5}}}"


def test_prompts_hold_the_problem_and_every_candidate_and_pick_the_template_by_k():
    llm = LLMAggregator(FakeClient(), PROBLEM)
    assert PROBLEM in llm.generation_prompt()
    one = llm.aggregation_prompt(["only {draft} A"])
    many = llm.aggregation_prompt(["draft A", "draft B", "draft C"])
    assert "a candidate solution" in one and "only {draft} A" in one
    assert "3 candidate solutions" in many and "may contain errors" in many
    assert all(text in many for text in ("draft A", "draft B", "draft C", PROBLEM))
    assert [f"--- Candidate {i} ---" in many for i in (1, 2, 3)] == [True] * 3
    assert format_candidates(["only {draft} A"]) in one
    with pytest.raises(ValueError, match="candidates: expected at least one"):
        llm.aggregation_prompt([])


def test_run_calls_the_client_n_t_times_with_last_round_candidates():
    client = FakeClient()
    llm = LLMAggregator(client, PROBLEM, extract_answer_fn=last_boxed_answer)
    result = llm.run(
        jax.random.key(0),
        population_size=4,
        subset_size=2,
        num_rounds=3,
        score_fn=lambda text: float(last_boxed_answer(text) == "4"),
    )
    assert len(client.prompts) == 12 and len(result.population) == 4
    first, second = client.prompts[:4], client.prompts[4:8]
    assert all(p == llm.generation_prompt() for p in first)
    outputs = {
        n: f"attempt {n}: {{some}} reasoning \\boxed{{{4 if n % 3 else 5}}}" for n in range(1, 13)
    }
    for prompt in second:  # each aggregates 2 distinct candidates of round 0 (attempts 1-4)
        used = [n for n in range(1, 5) if outputs[n] in prompt]
        assert len(used) == 2 and "2 candidate solutions" in prompt
        assert not any(outputs[n] in prompt for n in range(5, 13))
    # Majority votes on the boxed answers: 4 wins 3 to 1 in rounds 0 and 1; round 2 answers
    # 5, 4, 4, 5 and the tie goes to the answer met first, 5.
    assert result.info.majority_score.tolist() == [1.0, 1.0, 0.0]
    assert result.info.mean_score[0] == pytest.approx(0.75)  # attempt 3 says 5
    assert result.info.distinct_fraction[0] == pytest.approx(0.5)


def test_k_1_is_self_refinement():
    client = FakeClient()
    LLMAggregator(client, PROBLEM).run(
        jax.random.key(1), population_size=2, subset_size=1, num_rounds=2
    )
    assert all("a candidate solution" in p and "Review it" in p for p in client.prompts[2:])


def test_last_boxed_answer():
    assert last_boxed_answer("so \\boxed{3} then \\boxed{\\frac{1}{2}} ") == "\\frac{1}{2}"
    assert last_boxed_answer("no answer") is None
    assert last_boxed_answer("\\boxed{unclosed") is None


def test_bad_clients_and_templates_are_named():
    with pytest.raises(TypeError, match="complete_fn: expected a callable"):
        LLMAggregator("gpt", PROBLEM)
    with pytest.raises(TypeError, match="complete_fn: expected a str completion, got dict"):
        LLMAggregator(lambda prompt: {"text": "4"}, PROBLEM).generate_fn()
    with pytest.raises(ValueError, match="aggregation_template: expected the field"):
        LLMAggregator(str, PROBLEM, aggregation_template="Problem: {problem}")
    with pytest.raises(ValueError, match=re.escape("refinement_template: expected a str.format")):
        LLMAggregator(str, PROBLEM, refinement_template="{problem} {candidates} {oops}")
    assert "{num_candidates}" in AGGREGATION_TEMPLATE
