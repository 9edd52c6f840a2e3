"""A payout function that runs only when Stage0 allows it.

Run against a server (`make serve` prints a key; give the agent key `check` scope):

    STAGE0_API_BASE=http://127.0.0.1:8000 STAGE0_API_KEY=s0_... python examples/guarded_payout.py

The first call is deferred: it prints the approval request. Approve it (as another principal,
with a key that has the `approve` scope):

    stage0 approvals approve --key s0_<approver key> apr_...

and run the script again with `--wait 600`: the guard waits for the approval, checks again,
verifies and consumes the execution token, and only then pays.
"""

from __future__ import annotations

import argparse

import stage0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor", default="acme-supplies")
    parser.add_argument("--amount", type=int, default=1250)
    parser.add_argument("--wait", type=float, default=None, help="seconds to wait for approval")
    args = parser.parse_args()

    client = stage0.Client()  # STAGE0_API_BASE, STAGE0_API_KEY

    @stage0.guard(
        tool="payments.create_payout",
        side_effects=["money movement"],
        constraints=["approval required", "max_cost_usd: 5"],
        environment="production",
        success_criteria=["The vendor is paid exactly once"],
        client=client,
        wait_for_approval=args.wait,
    )
    def create_payout(vendor: str, amount: int) -> str:
        # Stage0 never executes anything: this is where your runtime pays.
        return f"paid {amount} to {vendor}"

    try:
        print(create_payout(args.vendor, args.amount))
    except stage0.ActionDeferred as deferred:
        approval = deferred.approval or {}
        print(f"deferred ({deferred.request_id}): approval {approval.get('approval_id')} "
              f"needs {approval.get('required_approvals')} approver(s)")
    except stage0.ActionDenied as denied:
        print(f"denied ({denied.request_id}): {[i['code'] for i in denied.issues]}")
    finally:
        client.close()


if __name__ == "__main__":
    main()
