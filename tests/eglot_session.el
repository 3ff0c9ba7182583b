;;; eglot_session.el --- drive mose serve from Emacs eglot in batch mode  -*- lexical-binding: t -*-
;; Used by tests/test_clients_eglot.py.  Reads the environment: MOSE_PYTHON, MOSE_WORKSPACE,
;; MOSE_MODEL, MOSE_INDEX_DIR, MOSE_LOG, MOSE_OUT (JSON written here) and MOSE_ENDING
;; ("shutdown": eglot-shutdown; "kill": kill Emacs with the server running).
(require 'eglot)
(require 'json)

(defvar mose-out nil)
(defun mose-wait (what pred &optional seconds)
  (let ((deadline (+ (float-time) (or seconds 120))) value)
    (while (and (not (setq value (funcall pred))) (< (float-time) deadline))
      (accept-process-output nil 0.2))
    (unless value (error "timed out waiting for %s" what))
    value))

(let* ((ws (file-name-as-directory (getenv "MOSE_WORKSPACE")))
       (file (expand-file-name "pkg/strings.py" ws))
       (contact (list (getenv "MOSE_PYTHON") "-m" "mose_lsp" "serve"
                      "--model" (getenv "MOSE_MODEL") "--index-dir" (getenv "MOSE_INDEX_DIR")
                      "--log-level" "info" "--log-file" (getenv "MOSE_LOG")))
       (out (list)))
  (setq project-find-functions (list (lambda (_dir) (cons 'transient ws))))
  (find-file file)
  (python-mode)
  (eglot '(python-mode) (cons 'transient ws) 'eglot-lsp-server contact "python")
  (let ((server (mose-wait "the connection" #'eglot-current-server)))
    (mose-wait "the first index"
               (lambda ()
                 (let* ((status (jsonrpc-request server :workspace/executeCommand
                                                 '(:command "mose.status" :arguments [])))
                        (folder (aref (plist-get status :folders) 0)))
                   (equal (plist-get folder :state) "ready"))))
    (let* ((symbols (jsonrpc-request server :workspace/symbol
                                     '(:query "edit distance between two strings")))
           (top (aref symbols 0)))
      (push (cons "symbol" (plist-get top :name)) out)
      (push (cons "line" (plist-get (plist-get (plist-get (plist-get top :location) :range)
                                             :start) :line)) out))
    ;; An unsaved edit, searched without saving.
    (goto-char (point-max))
    (insert "\n\ndef count_vowels(text: str) -> int:\n"
            "    \"\"\"How many vowels the text holds.\"\"\"\n"
            "    return sum(ch in \"aeiou\" for ch in text.lower())\n")
    (eglot--signal-textDocument/didChange)
    (push (cons "edit_found"
                (mose-wait "the edit to be searchable"
                           (lambda ()
                             (let ((hits (plist-get (jsonrpc-request
                                                     server :workspace/executeCommand
                                                     '(:command "mose.search" :arguments
                                                                [(:query "count the vowels in a text" :k 3)]))
                                                    :results)))
                               (and (> (length hits) 0)
                                    (equal (plist-get (aref hits 0) :symbol) "count_vowels"))))))
          out)
    (with-current-buffer (jsonrpc-events-buffer server)
      (push (cons "mose_methods_received"
                  (save-excursion (goto-char (point-min))
                                  (let ((n 0)) (while (search-forward "mose/documentIndexed" nil t) (setq n (1+ n))) n)))
            out))
    (with-temp-file (getenv "MOSE_OUT") (insert (json-encode out)))
    (if (equal (getenv "MOSE_ENDING") "shutdown")
        (progn (eglot-shutdown server) (kill-emacs 0))
      (set-buffer-modified-p nil)
      (kill-emacs 0))))
