"""petcdctl `completion bash|fish|powershell|zsh` and cobra's hidden `__complete` request.

The scripts are the ones cobra (1.x, which the installed etcdctl 3.4 is built with) generates:
they call `<program> __complete <args>...` (or `__completeNoDesc`) and read back one candidate a
line (with a tab-separated description), then `:<directive>`. `complete` answers those requests
from petcdctl's command tree: subcommand names, flag names, and cobra's directives (no file
completion after a command group or a flag name, the shell's default completion otherwise).
Flag values and keys are not completed, as in etcdctl.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from petcd.ctl.flags import Flag

if TYPE_CHECKING:
    from petcd.ctl.main import Command, Ctx

__all__ = ["LONGS", "SCRIPTS", "complete", "program_name", "register", "script"]

DIRECTIVE_DEFAULT = 0
DIRECTIVE_NO_FILE_COMP = 4
_DIRECTIVE_NAMES = {
    DIRECTIVE_DEFAULT: "ShellCompDirectiveDefault",
    DIRECTIVE_NO_FILE_COMP: "ShellCompDirectiveNoFileComp",
}
SHELLS = {
    "bash": "Generate the autocompletion script for bash",
    "fish": "Generate the autocompletion script for fish",
    "powershell": "Generate the autocompletion script for powershell",
    "zsh": "Generate the autocompletion script for zsh",
}
NO_DESC = Flag("no-descriptions", "bool", False, "disable completion descriptions")


def program_name() -> str:
    """The name the script registers completions for: petcdctl, unless installed under
    another name (e.g. as a drop-in `etcdctl`)."""
    base = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not base or base.endswith(".py") or base.startswith("python") or base == "-c":
        return "petcdctl"
    return base


def script(shell: str, name: str, descriptions: bool = True) -> str:
    comp = "__complete" if descriptions else "__completeNoDesc"
    uname = name.upper().replace("-", "_")
    return SCRIPTS[shell].replace("@COMP@", comp).replace("@UNAME@", uname).replace("@NAME@", name)


async def cmd_completion(ctx: Ctx, args: list[str]) -> None:
    from petcd.ctl.main import CtlExit, flush, out, usage

    if args:  # cobra.NoArgs
        msg = f'unknown command "{args[0]}" for "etcdctl completion {ctx.cmd.name}"'
        sys.stderr.write(f"Error: {msg}\n")
        sys.stderr.flush()
        out(usage(ctx.cmd))
        flush()
        sys.stderr.write("\n")
        raise CtlExit(1, msg)
    out(script(ctx.cmd.name, program_name(), not ctx["no-descriptions"]))


def register(root: Command) -> None:
    from petcd.ctl import help
    from petcd.ctl.main import Command

    if any(s.name == "completion" for s in root.subs):
        return
    group = Command("completion", "completion", "Generate the autocompletion script for the specified shell")  # fmt: skip
    group.parent = root
    root.subs.append(group)
    help.LONG.setdefault("completion", LONGS["completion"])
    for shell, short in SHELLS.items():
        sub = Command(shell, shell, short, cmd_completion, [NO_DESC])
        sub.parent = group
        group.subs.append(sub)
        help.LONG.setdefault(sub.path(), LONGS[sub.path()])
        if shell == "bash":  # cobra sets DisableFlagsInUseLine on the bash one only
            help.NO_FLAGS_IN_USE.add(sub.path())


# ---------------------------------------------------------------------------------------------
# __complete


def _flags_of(cmd: Command) -> tuple[list[Flag], list[Flag]]:
    """(inherited, local) flags as cobra sees them, each sorted by name."""
    from petcd.ctl.help import HELP_FLAG_USAGE
    from petcd.ctl.main import GLOBAL_FLAGS

    local = cmd.flags + cmd.persistent + [Flag("help", "bool", False, HELP_FLAG_USAGE % cmd.name, "h")]  # fmt: skip
    inherited: list[Flag] = []
    p = cmd.parent
    while p is not None:
        inherited.extend(p.persistent)
        p = p.parent
    if cmd.parent is None:
        local += GLOBAL_FLAGS
    else:
        inherited += GLOBAL_FLAGS
    return sorted(inherited, key=lambda f: f.name), sorted(local, key=lambda f: f.name)


def _walk(root: Command, args: list[str]) -> tuple[Command | None, list[str], list[str]]:
    """cobra's Find over the words before the one being completed: the command, the flag words
    and the positional arguments. None for an unknown word at the root."""
    from petcd.ctl.main import GLOBAL_FLAGS

    takes_value = {f"--{f.name}" for f in GLOBAL_FLAGS if f.kind != "bool"}
    takes_value |= {f"-{f.short}" for f in GLOBAL_FLAGS if f.short and f.kind != "bool"}
    cmd, flags, pos, i = root, [], [], 0
    while i < len(args):
        a = args[i]
        if a in takes_value:
            flags.extend(args[i : i + 2])
            i += 2
            continue
        if a.startswith("-"):
            flags.append(a)
        elif not pos and cmd.subs and (nxt := cmd.find(a)) is not None:
            cmd = nxt
        elif cmd is root:
            return None, flags, pos
        else:
            pos.append(a)
        i += 1
    return cmd, flags, pos


def complete(root: Command, args: list[str], descriptions: bool = True) -> int:
    """Answer `__complete <args...> <word>` as cobra does; returns the exit code (0)."""
    word = args[-1] if args else ""
    cmd, rest, pos = _walk(root, args[:-1])
    comps: list[tuple[str, str]] = []
    directive = DIRECTIVE_DEFAULT
    if cmd is None:
        sys.stderr.write(
            f"[Debug] [Error] Unable to find a command for arguments: [{' '.join(args[:-1])}]\n"
        )
    else:
        inherited, local = _flags_of(cmd)
        by_name = {f"--{f.name}": f for f in inherited + local}
        by_name.update({f"-{f.short}": f for f in inherited + local if f.short})
        prev = rest[-1] if rest else ""
        if prev in by_name and by_name[prev].kind != "bool":
            pass  # completing a flag's value: nothing registered, the shell's default
        elif word.startswith("-"):
            if "=" not in word:
                directive = DIRECTIVE_NO_FILE_COMP
                used = {r.split("=", 1)[0] for r in rest if r.startswith("-")}
                for f in inherited + local:
                    if f"--{f.name}" in used or (f.short and f"-{f.short}" in used):
                        if f.kind != "strslice":
                            continue
                    if f"--{f.name}".startswith(word):
                        comps.append((f"--{f.name}", f.usage))
                    if f.short and len(word) == 1:
                        comps.append((f"-{f.short}", f.usage))
        elif cmd.name == "help" and cmd.parent is root:
            # the help command completes command names, as far as they go
            target, _, extra = _walk(root, pos)
            directive = DIRECTIVE_NO_FILE_COMP
            if target is not None and not extra:
                comps = [(s.name, s.short) for s in target.subs if s.name.startswith(word)]
        elif cmd.subs and not pos:
            directive = DIRECTIVE_NO_FILE_COMP
            comps = [(s.name, s.short) for s in cmd.subs if s.name.startswith(word)]
        elif cmd.parent is not None and cmd.parent.name == "completion":
            directive = DIRECTIVE_NO_FILE_COMP
    lines = [f"{c}\t{d}" if descriptions and d else c for c, d in comps]
    sys.stdout.write("".join(line + "\n" for line in lines) + f":{directive}\n")
    sys.stdout.flush()
    sys.stderr.write(f"Completion ended with directive: {_DIRECTIVE_NAMES[directive]}\n")
    return 0


LONGS: dict[str, str] = {
    'completion': "Generate the autocompletion script for etcdctl for the specified shell.\nSee each sub-command's help for details on how to use the generated script.",
    'completion bash': "Generate the autocompletion script for the bash shell.\n\nThis script depends on the 'bash-completion' package.\nIf it is not installed already, you can install it via your OS's package manager.\n\nTo load completions in your current shell session:\n\n\tsource <(etcdctl completion bash)\n\nTo load completions for every new session, execute once:\n\n#### Linux:\n\n\tetcdctl completion bash > /etc/bash_completion.d/etcdctl\n\n#### macOS:\n\n\tetcdctl completion bash > $(brew --prefix)/etc/bash_completion.d/etcdctl\n\nYou will need to start a new shell for this setup to take effect.",
    'completion fish': 'Generate the autocompletion script for the fish shell.\n\nTo load completions in your current shell session:\n\n\tetcdctl completion fish | source\n\nTo load completions for every new session, execute once:\n\n\tetcdctl completion fish > ~/.config/fish/completions/etcdctl.fish\n\nYou will need to start a new shell for this setup to take effect.',
    'completion powershell': 'Generate the autocompletion script for powershell.\n\nTo load completions in your current shell session:\n\n\tetcdctl completion powershell | Out-String | Invoke-Expression\n\nTo load completions for every new session, add the output of the above command\nto your powershell profile.',
    'completion zsh': 'Generate the autocompletion script for the zsh shell.\n\nIf shell completion is not already enabled in your environment you will need\nto enable it.  You can execute the following once:\n\n\techo "autoload -U compinit; compinit" >> ~/.zshrc\n\nTo load completions in your current shell session:\n\n\tsource <(etcdctl completion zsh); compdef _etcdctl etcdctl\n\nTo load completions for every new session, execute once:\n\n#### Linux:\n\n\tetcdctl completion zsh > "${fpath[1]}/_etcdctl"\n\n#### macOS:\n\n\tetcdctl completion zsh > $(brew --prefix)/share/zsh/site-functions/_etcdctl\n\nYou will need to start a new shell for this setup to take effect.',
}  # fmt: skip

# cobra's generated scripts (its V2 bash script), with the program name and request command as
# placeholders: @NAME@ (as typed), @UNAME@ (upper case, for the active-help variable), @COMP@.
SCRIPTS: dict[str, str] = {
    "bash": r"""# bash completion V2 for @NAME@                              -*- shell-script -*-

__@NAME@_debug()
{
    if [[ -n ${BASH_COMP_DEBUG_FILE:-} ]]; then
        echo "$*" >> "${BASH_COMP_DEBUG_FILE}"
    fi
}

# Macs have bash3 for which the bash-completion package doesn't include
# _init_completion. This is a minimal version of that function.
__@NAME@_init_completion()
{
    COMPREPLY=()
    _get_comp_words_by_ref "$@" cur prev words cword
}

# This function calls the @NAME@ program to obtain the completion
# results and the directive.  It fills the 'out' and 'directive' vars.
__@NAME@_get_completion_results() {
    local requestComp lastParam lastChar args

    # Prepare the command to request completions for the program.
    # Calling ${words[0]} instead of directly @NAME@ allows to handle aliases
    args=("${words[@]:1}")
    requestComp="${words[0]} @COMP@ ${args[*]}"

    lastParam=${words[$((${#words[@]}-1))]}
    lastChar=${lastParam:$((${#lastParam}-1)):1}
    __@NAME@_debug "lastParam ${lastParam}, lastChar ${lastChar}"

    if [ -z "${cur}" ] && [ "${lastChar}" != "=" ]; then
        # If the last parameter is complete (there is a space following it)
        # We add an extra empty parameter so we can indicate this to the go method.
        __@NAME@_debug "Adding extra empty parameter"
        requestComp="${requestComp} ''"
    fi

    # When completing a flag with an = (e.g., @NAME@ -n=<TAB>)
    # bash focuses on the part after the =, so we need to remove
    # the flag part from $cur
    if [[ "${cur}" == -*=* ]]; then
        cur="${cur#*=}"
    fi

    __@NAME@_debug "Calling ${requestComp}"
    # Use eval to handle any environment variables and such
    out=$(eval "${requestComp}" 2>/dev/null)

    # Extract the directive integer at the very end of the output following a colon (:)
    directive=${out##*:}
    # Remove the directive
    out=${out%:*}
    if [ "${directive}" = "${out}" ]; then
        # There is not directive specified
        directive=0
    fi
    __@NAME@_debug "The completion directive is: ${directive}"
    __@NAME@_debug "The completions are: ${out}"
}

__@NAME@_process_completion_results() {
    local shellCompDirectiveError=1
    local shellCompDirectiveNoSpace=2
    local shellCompDirectiveNoFileComp=4
    local shellCompDirectiveFilterFileExt=8
    local shellCompDirectiveFilterDirs=16

    if [ $((directive & shellCompDirectiveError)) -ne 0 ]; then
        # Error code.  No completion.
        __@NAME@_debug "Received error from custom completion go code"
        return
    else
        if [ $((directive & shellCompDirectiveNoSpace)) -ne 0 ]; then
            if [[ $(type -t compopt) = "builtin" ]]; then
                __@NAME@_debug "Activating no space"
                compopt -o nospace
            else
                __@NAME@_debug "No space directive not supported in this version of bash"
            fi
        fi
        if [ $((directive & shellCompDirectiveNoFileComp)) -ne 0 ]; then
            if [[ $(type -t compopt) = "builtin" ]]; then
                __@NAME@_debug "Activating no file completion"
                compopt +o default
            else
                __@NAME@_debug "No file completion directive not supported in this version of bash"
            fi
        fi
    fi

    # Separate activeHelp from normal completions
    local completions=()
    local activeHelp=()
    __@NAME@_extract_activeHelp

    if [ $((directive & shellCompDirectiveFilterFileExt)) -ne 0 ]; then
        # File extension filtering
        local fullFilter filter filteringCmd

        # Do not use quotes around the $completions variable or else newline
        # characters will be kept.
        for filter in ${completions[*]}; do
            fullFilter+="$filter|"
        done

        filteringCmd="_filedir $fullFilter"
        __@NAME@_debug "File filtering command: $filteringCmd"
        $filteringCmd
    elif [ $((directive & shellCompDirectiveFilterDirs)) -ne 0 ]; then
        # File completion for directories only

        # Use printf to strip any trailing newline
        local subdir
        subdir=$(printf "%s" "${completions[0]}")
        if [ -n "$subdir" ]; then
            __@NAME@_debug "Listing directories in $subdir"
            pushd "$subdir" >/dev/null 2>&1 && _filedir -d && popd >/dev/null 2>&1 || return
        else
            __@NAME@_debug "Listing directories in ."
            _filedir -d
        fi
    else
        __@NAME@_handle_completion_types
    fi

    __@NAME@_handle_special_char "$cur" :
    __@NAME@_handle_special_char "$cur" =

    # Print the activeHelp statements before we finish
    if [ ${#activeHelp[*]} -ne 0 ]; then
        printf "\n";
        printf "%s\n" "${activeHelp[@]}"
        printf "\n"

        # The prompt format is only available from bash 4.4.
        # We test if it is available before using it.
        if (x=${PS1@P}) 2> /dev/null; then
            printf "%s" "${PS1@P}${COMP_LINE[@]}"
        else
            # Can't print the prompt.  Just print the
            # text the user had typed, it is workable enough.
            printf "%s" "${COMP_LINE[@]}"
        fi
    fi
}

# Separate activeHelp lines from real completions.
# Fills the $activeHelp and $completions arrays.
__@NAME@_extract_activeHelp() {
    local activeHelpMarker="_activeHelp_ "
    local endIndex=${#activeHelpMarker}

    while IFS='' read -r comp; do
        if [ "${comp:0:endIndex}" = "$activeHelpMarker" ]; then
            comp=${comp:endIndex}
            __@NAME@_debug "ActiveHelp found: $comp"
            if [ -n "$comp" ]; then
                activeHelp+=("$comp")
            fi
        else
            # Not an activeHelp line but a normal completion
            completions+=("$comp")
        fi
    done < <(printf "%s\n" "${out}")
}

__@NAME@_handle_completion_types() {
    __@NAME@_debug "__@NAME@_handle_completion_types: COMP_TYPE is $COMP_TYPE"

    case $COMP_TYPE in
    37|42)
        # Type: menu-complete/menu-complete-backward and insert-completions
        # If the user requested inserting one completion at a time, or all
        # completions at once on the command-line we must remove the descriptions.
        # https://github.com/spf13/cobra/issues/1508
        local tab=$'\t' comp
        while IFS='' read -r comp; do
            [[ -z $comp ]] && continue
            # Strip any description
            comp=${comp%%$tab*}
            # Only consider the completions that match
            if [[ $comp == "$cur"* ]]; then
                COMPREPLY+=("$comp")
            fi
        done < <(printf "%s\n" "${completions[@]}")
        ;;

    *)
        # Type: complete (normal completion)
        __@NAME@_handle_standard_completion_case
        ;;
    esac
}

__@NAME@_handle_standard_completion_case() {
    local tab=$'\t' comp

    # Short circuit to optimize if we don't have descriptions
    if [[ "${completions[*]}" != *$tab* ]]; then
        IFS=$'\n' read -ra COMPREPLY -d '' < <(compgen -W "${completions[*]}" -- "$cur")
        return 0
    fi

    local longest=0
    local compline
    # Look for the longest completion so that we can format things nicely
    while IFS='' read -r compline; do
        [[ -z $compline ]] && continue
        # Strip any description before checking the length
        comp=${compline%%$tab*}
        # Only consider the completions that match
        [[ $comp == "$cur"* ]] || continue
        COMPREPLY+=("$compline")
        if ((${#comp}>longest)); then
            longest=${#comp}
        fi
    done < <(printf "%s\n" "${completions[@]}")

    # If there is a single completion left, remove the description text
    if [ ${#COMPREPLY[*]} -eq 1 ]; then
        __@NAME@_debug "COMPREPLY[0]: ${COMPREPLY[0]}"
        comp="${COMPREPLY[0]%%$tab*}"
        __@NAME@_debug "Removed description from single completion, which is now: ${comp}"
        COMPREPLY[0]=$comp
    else # Format the descriptions
        __@NAME@_format_comp_descriptions $longest
    fi
}

__@NAME@_handle_special_char()
{
    local comp="$1"
    local char=$2
    if [[ "$comp" == *${char}* && "$COMP_WORDBREAKS" == *${char}* ]]; then
        local word=${comp%"${comp##*${char}}"}
        local idx=${#COMPREPLY[*]}
        while [[ $((--idx)) -ge 0 ]]; do
            COMPREPLY[$idx]=${COMPREPLY[$idx]#"$word"}
        done
    fi
}

__@NAME@_format_comp_descriptions()
{
    local tab=$'\t'
    local comp desc maxdesclength
    local longest=$1

    local i ci
    for ci in ${!COMPREPLY[*]}; do
        comp=${COMPREPLY[ci]}
        # Properly format the description string which follows a tab character if there is one
        if [[ "$comp" == *$tab* ]]; then
            __@NAME@_debug "Original comp: $comp"
            desc=${comp#*$tab}
            comp=${comp%%$tab*}

            # $COLUMNS stores the current shell width.
            # Remove an extra 4 because we add 2 spaces and 2 parentheses.
            maxdesclength=$(( COLUMNS - longest - 4 ))

            # Make sure we can fit a description of at least 8 characters
            # if we are to align the descriptions.
            if [[ $maxdesclength -gt 8 ]]; then
                # Add the proper number of spaces to align the descriptions
                for ((i = ${#comp} ; i < longest ; i++)); do
                    comp+=" "
                done
            else
                # Don't pad the descriptions so we can fit more text after the completion
                maxdesclength=$(( COLUMNS - ${#comp} - 4 ))
            fi

            # If there is enough space for any description text,
            # truncate the descriptions that are too long for the shell width
            if [ $maxdesclength -gt 0 ]; then
                if [ ${#desc} -gt $maxdesclength ]; then
                    desc=${desc:0:$(( maxdesclength - 1 ))}
                    desc+="…"
                fi
                comp+="  ($desc)"
            fi
            COMPREPLY[ci]=$comp
            __@NAME@_debug "Final comp: $comp"
        fi
    done
}

__start_@NAME@()
{
    local cur prev words cword split

    COMPREPLY=()

    # Call _init_completion from the bash-completion package
    # to prepare the arguments properly
    if declare -F _init_completion >/dev/null 2>&1; then
        _init_completion -n "=:" || return
    else
        __@NAME@_init_completion -n "=:" || return
    fi

    __@NAME@_debug
    __@NAME@_debug "========= starting completion logic =========="
    __@NAME@_debug "cur is ${cur}, words[*] is ${words[*]}, #words[@] is ${#words[@]}, cword is $cword"

    # The user could have moved the cursor backwards on the command-line.
    # We need to trigger completion from the $cword location, so we need
    # to truncate the command-line ($words) up to the $cword location.
    words=("${words[@]:0:$cword+1}")
    __@NAME@_debug "Truncated words[*]: ${words[*]},"

    local out directive
    __@NAME@_get_completion_results
    __@NAME@_process_completion_results
}

if [[ $(type -t compopt) = "builtin" ]]; then
    complete -o default -F __start_@NAME@ @NAME@
else
    complete -o default -o nospace -F __start_@NAME@ @NAME@
fi

# ex: ts=4 sw=4 et filetype=sh
""",
    "fish": r"""# fish completion for @NAME@                              -*- shell-script -*-

function __@NAME@_debug
    set -l file "$BASH_COMP_DEBUG_FILE"
    if test -n "$file"
        echo "$argv" >> $file
    end
end

function __@NAME@_perform_completion
    __@NAME@_debug "Starting __@NAME@_perform_completion"

    # Extract all args except the last one
    set -l args (commandline -opc)
    # Extract the last arg and escape it in case it is a space
    set -l lastArg (string escape -- (commandline -ct))

    __@NAME@_debug "args: $args"
    __@NAME@_debug "last arg: $lastArg"

    # Disable ActiveHelp which is not supported for fish shell
    set -l requestComp "@UNAME@_ACTIVE_HELP=0 $args[1] @COMP@ $args[2..-1] $lastArg"

    __@NAME@_debug "Calling $requestComp"
    set -l results (eval $requestComp 2> /dev/null)

    # Some programs may output extra empty lines after the directive.
    # Let's ignore them or else it will break completion.
    # Ref: https://github.com/spf13/cobra/issues/1279
    for line in $results[-1..1]
        if test (string trim -- $line) = ""
            # Found an empty line, remove it
            set results $results[1..-2]
        else
            # Found non-empty line, we have our proper output
            break
        end
    end

    set -l comps $results[1..-2]
    set -l directiveLine $results[-1]

    # For Fish, when completing a flag with an = (e.g., <program> -n=<TAB>)
    # completions must be prefixed with the flag
    set -l flagPrefix (string match -r -- '-.*=' "$lastArg")

    __@NAME@_debug "Comps: $comps"
    __@NAME@_debug "DirectiveLine: $directiveLine"
    __@NAME@_debug "flagPrefix: $flagPrefix"

    for comp in $comps
        printf "%s%s\n" "$flagPrefix" "$comp"
    end

    printf "%s\n" "$directiveLine"
end

# This function does two things:
# - Obtain the completions and store them in the global __@NAME@_comp_results
# - Return false if file completion should be performed
function __@NAME@_prepare_completions
    __@NAME@_debug ""
    __@NAME@_debug "========= starting completion logic =========="

    # Start fresh
    set --erase __@NAME@_comp_results

    set -l results (__@NAME@_perform_completion)
    __@NAME@_debug "Completion results: $results"

    if test -z "$results"
        __@NAME@_debug "No completion, probably due to a failure"
        # Might as well do file completion, in case it helps
        return 1
    end

    set -l directive (string sub --start 2 $results[-1])
    set --global __@NAME@_comp_results $results[1..-2]

    __@NAME@_debug "Completions are: $__@NAME@_comp_results"
    __@NAME@_debug "Directive is: $directive"

    set -l shellCompDirectiveError 1
    set -l shellCompDirectiveNoSpace 2
    set -l shellCompDirectiveNoFileComp 4
    set -l shellCompDirectiveFilterFileExt 8
    set -l shellCompDirectiveFilterDirs 16

    if test -z "$directive"
        set directive 0
    end

    set -l compErr (math (math --scale 0 $directive / $shellCompDirectiveError) % 2)
    if test $compErr -eq 1
        __@NAME@_debug "Received error directive: aborting."
        # Might as well do file completion, in case it helps
        return 1
    end

    set -l filefilter (math (math --scale 0 $directive / $shellCompDirectiveFilterFileExt) % 2)
    set -l dirfilter (math (math --scale 0 $directive / $shellCompDirectiveFilterDirs) % 2)
    if test $filefilter -eq 1; or test $dirfilter -eq 1
        __@NAME@_debug "File extension filtering or directory filtering not supported"
        # Do full file completion instead
        return 1
    end

    set -l nospace (math (math --scale 0 $directive / $shellCompDirectiveNoSpace) % 2)
    set -l nofiles (math (math --scale 0 $directive / $shellCompDirectiveNoFileComp) % 2)

    __@NAME@_debug "nospace: $nospace, nofiles: $nofiles"

    # If we want to prevent a space, or if file completion is NOT disabled,
    # we need to count the number of valid completions.
    # To do so, we will filter on prefix as the completions we have received
    # may not already be filtered so as to allow fish to match on different
    # criteria than the prefix.
    if test $nospace -ne 0; or test $nofiles -eq 0
        set -l prefix (commandline -t | string escape --style=regex)
        __@NAME@_debug "prefix: $prefix"

        set -l completions (string match -r -- "^$prefix.*" $__@NAME@_comp_results)
        set --global __@NAME@_comp_results $completions
        __@NAME@_debug "Filtered completions are: $__@NAME@_comp_results"

        # Important not to quote the variable for count to work
        set -l numComps (count $__@NAME@_comp_results)
        __@NAME@_debug "numComps: $numComps"

        if test $numComps -eq 1; and test $nospace -ne 0
            # We must first split on \t to get rid of the descriptions to be
            # able to check what the actual completion will be.
            # We don't need descriptions anyway since there is only a single
            # real completion which the shell will expand immediately.
            set -l split (string split --max 1 \t $__@NAME@_comp_results[1])

            # Fish won't add a space if the completion ends with any
            # of the following characters: @=/:.,
            set -l lastChar (string sub -s -1 -- $split)
            if not string match -r -q "[@=/:.,]" -- "$lastChar"
                # In other cases, to support the "nospace" directive we trick the shell
                # by outputting an extra, longer completion.
                __@NAME@_debug "Adding second completion to perform nospace directive"
                set --global __@NAME@_comp_results $split[1] $split[1].
                __@NAME@_debug "Completions are now: $__@NAME@_comp_results"
            end
        end

        if test $numComps -eq 0; and test $nofiles -eq 0
            # To be consistent with bash and zsh, we only trigger file
            # completion when there are no other completions
            __@NAME@_debug "Requesting file completion"
            return 1
        end
    end

    return 0
end

# Since Fish completions are only loaded once the user triggers them, we trigger them ourselves
# so we can properly delete any completions provided by another script.
# Only do this if the program can be found, or else fish may print some errors; besides,
# the existing completions will only be loaded if the program can be found.
if type -q "@NAME@"
    # The space after the program name is essential to trigger completion for the program
    # and not completion of the program name itself.
    # Also, we use '> /dev/null 2>&1' since '&>' is not supported in older versions of fish.
    complete --do-complete "@NAME@ " > /dev/null 2>&1
end

# Remove any pre-existing completions for the program since we will be handling all of them.
complete -c @NAME@ -e

# The call to __@NAME@_prepare_completions will setup __@NAME@_comp_results
# which provides the program's completion choices.
complete -c @NAME@ -n '__@NAME@_prepare_completions' -f -a '$__@NAME@_comp_results'

""",
    "powershell": r"""# powershell completion for @NAME@                              -*- shell-script -*-

function __@NAME@_debug {
    if ($env:BASH_COMP_DEBUG_FILE) {
        "$args" | Out-File -Append -FilePath "$env:BASH_COMP_DEBUG_FILE"
    }
}

filter __@NAME@_escapeStringWithSpecialChars {
    $_ -replace '\s|#|@|\$|;|,|''|\{|\}|\(|\)|"|`|\||<|>|&','`$&'
}

[scriptblock]$__@NAME@CompleterBlock = {
    param(
            $WordToComplete,
            $CommandAst,
            $CursorPosition
        )

    # Get the current command line and convert into a string
    $Command = $CommandAst.CommandElements
    $Command = "$Command"

    __@NAME@_debug ""
    __@NAME@_debug "========= starting completion logic =========="
    __@NAME@_debug "WordToComplete: $WordToComplete Command: $Command CursorPosition: $CursorPosition"

    # The user could have moved the cursor backwards on the command-line.
    # We need to trigger completion from the $CursorPosition location, so we need
    # to truncate the command-line ($Command) up to the $CursorPosition location.
    # Make sure the $Command is longer then the $CursorPosition before we truncate.
    # This happens because the $Command does not include the last space.
    if ($Command.Length -gt $CursorPosition) {
        $Command=$Command.Substring(0,$CursorPosition)
    }
    __@NAME@_debug "Truncated command: $Command"

    $ShellCompDirectiveError=1
    $ShellCompDirectiveNoSpace=2
    $ShellCompDirectiveNoFileComp=4
    $ShellCompDirectiveFilterFileExt=8
    $ShellCompDirectiveFilterDirs=16

    # Prepare the command to request completions for the program.
    # Split the command at the first space to separate the program and arguments.
    $Program,$Arguments = $Command.Split(" ",2)

    $RequestComp="$Program @COMP@ $Arguments"
    __@NAME@_debug "RequestComp: $RequestComp"

    # we cannot use $WordToComplete because it
    # has the wrong values if the cursor was moved
    # so use the last argument
    if ($WordToComplete -ne "" ) {
        $WordToComplete = $Arguments.Split(" ")[-1]
    }
    __@NAME@_debug "New WordToComplete: $WordToComplete"


    # Check for flag with equal sign
    $IsEqualFlag = ($WordToComplete -Like "--*=*" )
    if ( $IsEqualFlag ) {
        __@NAME@_debug "Completing equal sign flag"
        # Remove the flag part
        $Flag,$WordToComplete = $WordToComplete.Split("=",2)
    }

    if ( $WordToComplete -eq "" -And ( -Not $IsEqualFlag )) {
        # If the last parameter is complete (there is a space following it)
        # We add an extra empty parameter so we can indicate this to the go method.
        __@NAME@_debug "Adding extra empty parameter"
        # We need to use `"`" to pass an empty argument a "" or '' does not work!!!
        $RequestComp="$RequestComp" + ' `"`"'
    }

    __@NAME@_debug "Calling $RequestComp"
    # First disable ActiveHelp which is not supported for Powershell
    $env:@UNAME@_ACTIVE_HELP=0

    #call the command store the output in $out and redirect stderr and stdout to null
    # $Out is an array contains each line per element
    Invoke-Expression -OutVariable out "$RequestComp" 2>&1 | Out-Null

    # get directive from last line
    [int]$Directive = $Out[-1].TrimStart(':')
    if ($Directive -eq "") {
        # There is no directive specified
        $Directive = 0
    }
    __@NAME@_debug "The completion directive is: $Directive"

    # remove directive (last element) from out
    $Out = $Out | Where-Object { $_ -ne $Out[-1] }
    __@NAME@_debug "The completions are: $Out"

    if (($Directive -band $ShellCompDirectiveError) -ne 0 ) {
        # Error code.  No completion.
        __@NAME@_debug "Received error from custom completion go code"
        return
    }

    $Longest = 0
    $Values = $Out | ForEach-Object {
        #Split the output in name and description
        $Name, $Description = $_.Split("`t",2)
        __@NAME@_debug "Name: $Name Description: $Description"

        # Look for the longest completion so that we can format things nicely
        if ($Longest -lt $Name.Length) {
            $Longest = $Name.Length
        }

        # Set the description to a one space string if there is none set.
        # This is needed because the CompletionResult does not accept an empty string as argument
        if (-Not $Description) {
            $Description = " "
        }
        @{Name="$Name";Description="$Description"}
    }


    $Space = " "
    if (($Directive -band $ShellCompDirectiveNoSpace) -ne 0 ) {
        # remove the space here
        __@NAME@_debug "ShellCompDirectiveNoSpace is called"
        $Space = ""
    }

    if ((($Directive -band $ShellCompDirectiveFilterFileExt) -ne 0 ) -or
       (($Directive -band $ShellCompDirectiveFilterDirs) -ne 0 ))  {
        __@NAME@_debug "ShellCompDirectiveFilterFileExt ShellCompDirectiveFilterDirs are not supported"

        # return here to prevent the completion of the extensions
        return
    }

    $Values = $Values | Where-Object {
        # filter the result
        $_.Name -like "$WordToComplete*"

        # Join the flag back if we have an equal sign flag
        if ( $IsEqualFlag ) {
            __@NAME@_debug "Join the equal sign flag back to the completion value"
            $_.Name = $Flag + "=" + $_.Name
        }
    }

    if (($Directive -band $ShellCompDirectiveNoFileComp) -ne 0 ) {
        __@NAME@_debug "ShellCompDirectiveNoFileComp is called"

        if ($Values.Length -eq 0) {
            # Just print an empty string here so the
            # shell does not start to complete paths.
            # We cannot use CompletionResult here because
            # it does not accept an empty string as argument.
            ""
            return
        }
    }

    # Get the current mode
    $Mode = (Get-PSReadLineKeyHandler | Where-Object {$_.Key -eq "Tab" }).Function
    __@NAME@_debug "Mode: $Mode"

    $Values | ForEach-Object {

        # store temporary because switch will overwrite $_
        $comp = $_

        # PowerShell supports three different completion modes
        # - TabCompleteNext (default windows style - on each key press the next option is displayed)
        # - Complete (works like bash)
        # - MenuComplete (works like zsh)
        # You set the mode with Set-PSReadLineKeyHandler -Key Tab -Function <mode>

        # CompletionResult Arguments:
        # 1) CompletionText text to be used as the auto completion result
        # 2) ListItemText   text to be displayed in the suggestion list
        # 3) ResultType     type of completion result
        # 4) ToolTip        text for the tooltip with details about the object

        switch ($Mode) {

            # bash like
            "Complete" {

                if ($Values.Length -eq 1) {
                    __@NAME@_debug "Only one completion left"

                    # insert space after value
                    [System.Management.Automation.CompletionResult]::new($($comp.Name | __@NAME@_escapeStringWithSpecialChars) + $Space, "$($comp.Name)", 'ParameterValue', "$($comp.Description)")

                } else {
                    # Add the proper number of spaces to align the descriptions
                    while($comp.Name.Length -lt $Longest) {
                        $comp.Name = $comp.Name + " "
                    }

                    # Check for empty description and only add parentheses if needed
                    if ($($comp.Description) -eq " " ) {
                        $Description = ""
                    } else {
                        $Description = "  ($($comp.Description))"
                    }

                    [System.Management.Automation.CompletionResult]::new("$($comp.Name)$Description", "$($comp.Name)$Description", 'ParameterValue', "$($comp.Description)")
                }
             }

            # zsh like
            "MenuComplete" {
                # insert space after value
                # MenuComplete will automatically show the ToolTip of
                # the highlighted value at the bottom of the suggestions.
                [System.Management.Automation.CompletionResult]::new($($comp.Name | __@NAME@_escapeStringWithSpecialChars) + $Space, "$($comp.Name)", 'ParameterValue', "$($comp.Description)")
            }

            # TabCompleteNext and in case we get something unknown
            Default {
                # Like MenuComplete but we don't want to add a space here because
                # the user need to press space anyway to get the completion.
                # Description will not be shown because that's not possible with TabCompleteNext
                [System.Management.Automation.CompletionResult]::new($($comp.Name | __@NAME@_escapeStringWithSpecialChars), "$($comp.Name)", 'ParameterValue', "$($comp.Description)")
            }
        }

    }
}

Register-ArgumentCompleter -CommandName '@NAME@' -ScriptBlock $__@NAME@CompleterBlock
""",
    "zsh": r"""#compdef @NAME@

# zsh completion for @NAME@                              -*- shell-script -*-

__@NAME@_debug()
{
    local file="$BASH_COMP_DEBUG_FILE"
    if [[ -n ${file} ]]; then
        echo "$*" >> "${file}"
    fi
}

_@NAME@()
{
    local shellCompDirectiveError=1
    local shellCompDirectiveNoSpace=2
    local shellCompDirectiveNoFileComp=4
    local shellCompDirectiveFilterFileExt=8
    local shellCompDirectiveFilterDirs=16

    local lastParam lastChar flagPrefix requestComp out directive comp lastComp noSpace
    local -a completions

    __@NAME@_debug "\n========= starting completion logic =========="
    __@NAME@_debug "CURRENT: ${CURRENT}, words[*]: ${words[*]}"

    # The user could have moved the cursor backwards on the command-line.
    # We need to trigger completion from the $CURRENT location, so we need
    # to truncate the command-line ($words) up to the $CURRENT location.
    # (We cannot use $CURSOR as its value does not work when a command is an alias.)
    words=("${=words[1,CURRENT]}")
    __@NAME@_debug "Truncated words[*]: ${words[*]},"

    lastParam=${words[-1]}
    lastChar=${lastParam[-1]}
    __@NAME@_debug "lastParam: ${lastParam}, lastChar: ${lastChar}"

    # For zsh, when completing a flag with an = (e.g., @NAME@ -n=<TAB>)
    # completions must be prefixed with the flag
    setopt local_options BASH_REMATCH
    if [[ "${lastParam}" =~ '-.*=' ]]; then
        # We are dealing with a flag with an =
        flagPrefix="-P ${BASH_REMATCH}"
    fi

    # Prepare the command to obtain completions
    requestComp="${words[1]} @COMP@ ${words[2,-1]}"
    if [ "${lastChar}" = "" ]; then
        # If the last parameter is complete (there is a space following it)
        # We add an extra empty parameter so we can indicate this to the go completion code.
        __@NAME@_debug "Adding extra empty parameter"
        requestComp="${requestComp} \"\""
    fi

    __@NAME@_debug "About to call: eval ${requestComp}"

    # Use eval to handle any environment variables and such
    out=$(eval ${requestComp} 2>/dev/null)
    __@NAME@_debug "completion output: ${out}"

    # Extract the directive integer following a : from the last line
    local lastLine
    while IFS='\n' read -r line; do
        lastLine=${line}
    done < <(printf "%s\n" "${out[@]}")
    __@NAME@_debug "last line: ${lastLine}"

    if [ "${lastLine[1]}" = : ]; then
        directive=${lastLine[2,-1]}
        # Remove the directive including the : and the newline
        local suffix
        (( suffix=${#lastLine}+2))
        out=${out[1,-$suffix]}
    else
        # There is no directive specified.  Leave $out as is.
        __@NAME@_debug "No directive found.  Setting do default"
        directive=0
    fi

    __@NAME@_debug "directive: ${directive}"
    __@NAME@_debug "completions: ${out}"
    __@NAME@_debug "flagPrefix: ${flagPrefix}"

    if [ $((directive & shellCompDirectiveError)) -ne 0 ]; then
        __@NAME@_debug "Completion received error. Ignoring completions."
        return
    fi

    local activeHelpMarker="_activeHelp_ "
    local endIndex=${#activeHelpMarker}
    local startIndex=$((${#activeHelpMarker}+1))
    local hasActiveHelp=0
    while IFS='\n' read -r comp; do
        # Check if this is an activeHelp statement (i.e., prefixed with $activeHelpMarker)
        if [ "${comp[1,$endIndex]}" = "$activeHelpMarker" ];then
            __@NAME@_debug "ActiveHelp found: $comp"
            comp="${comp[$startIndex,-1]}"
            if [ -n "$comp" ]; then
                compadd -x "${comp}"
                __@NAME@_debug "ActiveHelp will need delimiter"
                hasActiveHelp=1
            fi

            continue
        fi

        if [ -n "$comp" ]; then
            # If requested, completions are returned with a description.
            # The description is preceded by a TAB character.
            # For zsh's _describe, we need to use a : instead of a TAB.
            # We first need to escape any : as part of the completion itself.
            comp=${comp//:/\\:}

            local tab="$(printf '\t')"
            comp=${comp//$tab/:}

            __@NAME@_debug "Adding completion: ${comp}"
            completions+=${comp}
            lastComp=$comp
        fi
    done < <(printf "%s\n" "${out[@]}")

    # Add a delimiter after the activeHelp statements, but only if:
    # - there are completions following the activeHelp statements, or
    # - file completion will be performed (so there will be choices after the activeHelp)
    if [ $hasActiveHelp -eq 1 ]; then
        if [ ${#completions} -ne 0 ] || [ $((directive & shellCompDirectiveNoFileComp)) -eq 0 ]; then
            __@NAME@_debug "Adding activeHelp delimiter"
            compadd -x "--"
            hasActiveHelp=0
        fi
    fi

    if [ $((directive & shellCompDirectiveNoSpace)) -ne 0 ]; then
        __@NAME@_debug "Activating nospace."
        noSpace="-S ''"
    fi

    if [ $((directive & shellCompDirectiveFilterFileExt)) -ne 0 ]; then
        # File extension filtering
        local filteringCmd
        filteringCmd='_files'
        for filter in ${completions[@]}; do
            if [ ${filter[1]} != '*' ]; then
                # zsh requires a glob pattern to do file filtering
                filter="\*.$filter"
            fi
            filteringCmd+=" -g $filter"
        done
        filteringCmd+=" ${flagPrefix}"

        __@NAME@_debug "File filtering command: $filteringCmd"
        _arguments '*:filename:'"$filteringCmd"
    elif [ $((directive & shellCompDirectiveFilterDirs)) -ne 0 ]; then
        # File completion for directories only
        local subdir
        subdir="${completions[1]}"
        if [ -n "$subdir" ]; then
            __@NAME@_debug "Listing directories in $subdir"
            pushd "${subdir}" >/dev/null 2>&1
        else
            __@NAME@_debug "Listing directories in ."
        fi

        local result
        _arguments '*:dirname:_files -/'" ${flagPrefix}"
        result=$?
        if [ -n "$subdir" ]; then
            popd >/dev/null 2>&1
        fi
        return $result
    else
        __@NAME@_debug "Calling _describe"
        if eval _describe "completions" completions $flagPrefix $noSpace; then
            __@NAME@_debug "_describe found some completions"

            # Return the success of having called _describe
            return 0
        else
            __@NAME@_debug "_describe did not find completions."
            __@NAME@_debug "Checking if we should do file completion."
            if [ $((directive & shellCompDirectiveNoFileComp)) -ne 0 ]; then
                __@NAME@_debug "deactivating file completion"

                # We must return an error code here to let zsh know that there were no
                # completions found by _describe; this is what will trigger other
                # matching algorithms to attempt to find completions.
                # For example zsh can match letters in the middle of words.
                return 1
            else
                # Perform file completion
                __@NAME@_debug "Activating file completion"

                # We must return the result of this command, so it must be the
                # last command, or else we must store its result to return it.
                _arguments '*:filename:_files'" ${flagPrefix}"
            fi
        fi
    fi
}

# don't run the completion function when being source-ed or eval-ed
if [ "$funcstack[1]" = "_@NAME@" ]; then
    _@NAME@
fi
""",
}
