"""A fixed, hand-written set of insurance queries and passages used to judge fp16/int8 variants by
ranking agreement with the fp32 PyTorch reference (every query is scored against every passage)."""

QUERIES = [
    "What is the waiting period for critical illness cover?",
    "Does homeowners insurance cover flood damage?",
    "How much life insurance do I need with two children?",
    "Can I keep my health plan after I quit my job?",
    "Is a rental car covered by my auto policy?",
    "When can I withdraw from my annuity without a penalty?",
    "What does long-term care insurance pay for?",
    "Does Medicare Part B cover an annual physical?",
]

PASSAGES = [
    "Most critical illness policies have a waiting period of 30 to 90 days before a claim can be paid.",
    "A standard homeowners policy excludes flood; flood cover is bought separately, often through NFIP.",
    "A common rule of thumb is ten to twelve times your income, plus debts and the cost of college.",
    "COBRA lets you keep your employer's group health plan for up to 18 months after you leave.",
    "Your personal auto policy usually extends liability and collision to a rental car in the US.",
    "Withdrawals before age 59½ usually carry a 10% tax penalty, and surrender charges may apply.",
    "Long-term care insurance pays for help with daily activities at home, in assisted living or a home.",
    "Medicare Part B covers a yearly wellness visit but not a routine annual physical exam.",
    "Term life insurance expires at the end of the term and pays nothing if you outlive it.",
    "Renters insurance covers your belongings, not the building, which the landlord insures.",
    "Disability insurance replaces part of your income when illness or injury stops you working.",
    "Whole life policies build cash value that you can borrow against.",
    "The deductible is what you pay before the insurer pays anything on a claim.",
    "Umbrella insurance adds liability cover on top of your home and auto policies.",
    "An insurer may contest a life claim during the first two years if the application was wrong.",
    "Gap insurance pays the difference between a car's cash value and the loan balance.",
    "Pre-existing conditions cannot be excluded by ACA-compliant health plans.",
    "A fixed annuity pays a guaranteed rate; a variable annuity depends on its sub-accounts.",
    "Earthquake damage needs a separate endorsement or policy in most states.",
    "Premiums for individual disability cover depend on occupation, age and benefit period.",
    "Some critical illness plans also require you to survive 14 or 30 days after diagnosis.",
    "Comprehensive auto cover pays for theft, hail and hitting a deer.",
    "Beneficiaries receive life insurance proceeds free of federal income tax in most cases.",
    "Medigap plans help pay the costs that Original Medicare leaves to you.",
]


def probe_groups() -> list[tuple[str, list[str]]]:
    return [(q, list(PASSAGES)) for q in QUERIES]
