"""Bash completion: `trainlab train -sc install=bash` prints trainlab's completer, which asks Hydra about the
overrides of one command at a time."""

from __future__ import annotations

import os
import sys

from trainlab.core.errors import TrainlabError

BASH_COMPLETION = """# trainlab's bash completion: eval "$(trainlab train -sc install=bash)" (in ~/.bashrc to keep it)
_trainlab_completion()
{
    local cur="${COMP_WORDS[COMP_CWORD]}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "COMMANDS" -- "$cur"))
        return
    fi
    case "${COMP_WORDS[1]}" in
        HYDRA_COMMANDS)
            local choices
            choices=$(COMP_POINT=$COMP_POINT COMP_LINE="$COMP_LINE" trainlab "${COMP_WORDS[1]}" -sc query=bash \
                      2>/dev/null)
            COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "$cur"))
            ;;
        *)
            COMPREPLY=($(compgen -o default -- "$cur"))
            ;;
    esac
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _trainlab_completion trainlab
"""


def shell_completion(command: str, args: list[str], commands) -> None:
    """`-sc install=bash` prints trainlab's completer (Hydra's would call `trainlab -sc query=bash`, which is no
    command); `-sc query=bash` is that completer's question about one command: Hydra answers it once the command
    word is taken out of the line, so it sees the overrides only."""
    flag = next((i for i, a in enumerate(args) if a in ("-sc", "--shell-completion")), None)
    if flag is None or flag + 1 >= len(args):
        return
    action = args[flag + 1]
    if action.startswith("install="):
        if action != "install=bash":
            raise TrainlabError(f"{action}: trainlab installs bash completion (zsh: autoload bashcompinit && "
                                "bashcompinit, then the same line)")
        print(BASH_COMPLETION.replace('"COMMANDS"', f'"{" ".join(commands)}"')
              .replace("HYDRA_COMMANDS)", "|".join(n for n, c in commands.items() if c.config) + ")"), end="")
        sys.exit(0)
    if action.startswith("uninstall="):
        print("complete -r trainlab 2> /dev/null")
        sys.exit(0)
    if action.startswith("query=") and "COMP_LINE" in os.environ:
        words = os.environ["COMP_LINE"].split(" ", 2)
        if len(words) >= 2 and words[1] == command:
            os.environ["COMP_LINE"] = " ".join([words[0]] + words[2:]) if len(words) > 2 else words[0] + " "
